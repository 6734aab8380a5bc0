//! The process manager of `sagactl dev`: a child that exits unexpectedly is started
//! again after a backoff (its data kept); one that keeps crashing is reported and left
//! down while the rest keeps serving; the control socket's requests (ps, kill, stop,
//! start, restart) are carried out here, on the loop that owns the stack.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::args::DevSignal;
use crate::devctl::{Answer, ChildInfo, Request};
use crate::output::{esayln, sayln};
use crate::stack::{tail, Exited, ProcId, Stack};

/// Crashes are counted over this window.
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// The first restart's delay; doubled for each further crash within the window.
const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(30);

/// What the supervisor does about one child.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Watch {
    Up,
    /// Ended unexpectedly; started again at that instant.
    RestartAt(Instant),
    /// Crashed too often, or could not be started; waits for `start`.
    Down(String),
    /// Being stopped on request; then started again when `restart` asked.
    Stopping {
        then_start: bool,
    },
    /// Stopped on request; waits for `start`.
    Stopped,
}

#[derive(Debug)]
struct Child {
    watch: Watch,
    /// When it ended unexpectedly, within the last [`CRASH_WINDOW`].
    crashes: VecDeque<Instant>,
}

/// A child stopped on request has gone: how it went.
#[derive(Debug)]
pub struct Gone {
    id: ProcId,
    line: String,
}

impl Gone {
    /// How it went, in one line.
    pub fn line(&self) -> &str {
        &self.line
    }
}

/// The delay before restarting a child that crashed `n` times within the window.
pub fn restart_delay(n: usize) -> Duration {
    let doublings = u32::try_from(n.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(16);
    (FIRST_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
}

/// `1 s`, `16 s`.
fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs())
}

pub struct Supervisor {
    children: HashMap<ProcId, Child>,
    /// More crashes than this within the window leave a child down.
    max_restarts: u32,
    gone_tx: mpsc::UnboundedSender<Gone>,
    /// The tasks waiting for children stopped on request.
    stopping: Vec<JoinHandle<()>>,
}

impl Supervisor {
    /// Supervises every child of `stack`; children stopped on request are reported on
    /// the returned channel (pass each to [`Supervisor::gone`]).
    pub fn new(stack: &Stack, max_restarts: u32) -> (Self, mpsc::UnboundedReceiver<Gone>) {
        let (gone_tx, gone) = mpsc::unbounded_channel();
        let children = stack
            .ids()
            .map(|id| {
                (
                    id,
                    Child {
                        watch: Watch::Up,
                        crashes: VecDeque::new(),
                    },
                )
            })
            .collect();
        (
            Self {
                children,
                max_restarts,
                gone_tx,
                stopping: Vec::new(),
            },
            gone,
        )
    }

    fn child(&mut self, id: ProcId) -> &mut Child {
        self.children.entry(id).or_insert(Child {
            watch: Watch::Up,
            crashes: VecDeque::new(),
        })
    }

    /// A child ended without being asked to: schedule its restart, or leave it down when
    /// it crashed too often.
    pub fn exited(&mut self, exit: Exited, now: Instant) {
        let max = self.max_restarts;
        let child = self.child(exit.id);
        child.crashes.push_back(now);
        while child
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
        {
            child.crashes.pop_front();
        }
        let n = child.crashes.len();
        let how = exit.how();
        if n > max as usize {
            child.watch = Watch::Down(format!("{how}; {n} crashes within a minute"));
            esayln!(
                "{} {how}: it ended unexpectedly {n} times within a minute, so it is left \
                 down (the rest keeps running; `sagactl dev start {}` starts it again). \
                 Last lines of {}:\n{}",
                exit.name,
                exit.name,
                exit.log.display(),
                tail(&exit.log, 20)
            );
            return;
        }
        let delay = restart_delay(n);
        child.watch = Watch::RestartAt(now + delay);
        sayln!("{} {how}; restarted in {}", exit.name, secs(delay));
    }

    /// When the next scheduled restart is due.
    pub fn next_restart(&self) -> Option<Instant> {
        self.children
            .values()
            .filter_map(|c| match c.watch {
                Watch::RestartAt(t) => Some(t),
                _ => None,
            })
            .min()
    }

    /// Starts the children whose restart is due.
    pub async fn restart_due(&mut self, stack: &mut Stack, now: Instant) {
        let due: Vec<ProcId> = stack
            .ids()
            .filter(|id| {
                matches!(self.children.get(id), Some(Child { watch: Watch::RestartAt(t), .. }) if *t <= now)
            })
            .collect();
        for id in due {
            // A failure to start is reported and leaves it down.
            let _ = self.start(stack, id).await;
        }
    }

    /// Starts the child; a failure to start leaves it down with the reason.
    async fn start(&mut self, stack: &mut Stack, id: ProcId) -> Result<(), String> {
        match stack.restart(id).await {
            Ok(()) => {
                self.child(id).watch = Watch::Up;
                Ok(())
            }
            Err(e) => {
                let why = format!("could not be started: {e:#}");
                esayln!("{} {why}; left down", stack.name(id));
                self.child(id).watch = Watch::Down(why.clone());
                Err(why)
            }
        }
    }

    /// A child stopped on request is gone.
    pub async fn gone(&mut self, stack: &mut Stack, gone: Gone) {
        sayln!("{}", gone.line);
        let then_start = matches!(
            self.child(gone.id).watch,
            Watch::Stopping { then_start: true }
        );
        if then_start {
            let _ = self.start(stack, gone.id).await;
        } else {
            self.child(gone.id).watch = Watch::Stopped;
        }
    }

    /// Waits for the children that are being stopped on request.
    pub async fn finish(&mut self) {
        for t in self.stopping.drain(..) {
            let _ = t.await;
        }
    }

    fn begin_stop(&mut self, stack: &mut Stack, id: ProcId, then_start: bool) -> bool {
        let Some(stopping) = stack.begin_stop(id) else {
            return false;
        };
        self.child(id).watch = Watch::Stopping { then_start };
        let tx = self.gone_tx.clone();
        self.stopping.push(tokio::spawn(async move {
            let line = stopping.wait().await;
            let _ = tx.send(Gone { id, line });
        }));
        true
    }

    /// Carries out a control request.
    pub async fn handle(&mut self, stack: &mut Stack, request: Request) -> Answer {
        if let Request::Ps = request {
            return self.ps(stack);
        }
        let name = match &request {
            Request::Ps => unreachable!("answered above"),
            Request::Signal { name, .. }
            | Request::Stop { name }
            | Request::Start { name }
            | Request::Restart { name } => name.clone(),
        };
        let Some(id) = stack.find(&name) else {
            let known: Vec<&str> = stack.ids().map(|id| stack.name(id)).collect();
            return Answer::refused(format!(
                "no child `{name}` in this stack; there are: {}",
                known.join(", ")
            ));
        };
        let watch = self.child(id).watch.clone();
        match request {
            Request::Ps => unreachable!("answered above"),
            Request::Signal { signal, .. } => {
                if watch != Watch::Up || !stack.is_running(id) {
                    return Answer::refused(format!(
                        "{name} is not running ({})",
                        self.state(stack, id)
                    ));
                }
                let sig = match signal {
                    DevSignal::Kill => Signal::SIGKILL,
                    DevSignal::Term => Signal::SIGTERM,
                    DevSignal::Stop => Signal::SIGSTOP,
                    DevSignal::Cont => Signal::SIGCONT,
                };
                let pid = stack.pid(id).unwrap_or_default();
                match stack.signal(id, sig) {
                    Ok(()) => Answer::done(format!("sent {} to {name} (pid {pid})", sig.as_str())),
                    Err(e) => Answer::refused(format!("{e:#}")),
                }
            }
            Request::Stop { .. } => match watch {
                Watch::Up if self.begin_stop(stack, id, false) => Answer::done(format!(
                    "stopping {name}; it stays down until `sagactl dev start {name}`"
                )),
                Watch::RestartAt(_) | Watch::Down(_) | Watch::Up => {
                    self.child(id).watch = Watch::Stopped;
                    Answer::done(format!(
                        "{name} is down and stays down until `sagactl dev start {name}`"
                    ))
                }
                Watch::Stopping { .. } => {
                    self.child(id).watch = Watch::Stopping { then_start: false };
                    Answer::done(format!("{name} is stopping"))
                }
                Watch::Stopped => Answer::done(format!("{name} is already stopped")),
            },
            Request::Start { .. } => match watch {
                Watch::Up => Answer::refused(format!("{name} is already running")),
                Watch::Stopping { .. } => {
                    self.child(id).watch = Watch::Stopping { then_start: true };
                    Answer::done(format!("{name} is stopping; it starts again once gone"))
                }
                Watch::RestartAt(_) | Watch::Down(_) | Watch::Stopped => {
                    self.child(id).crashes.clear();
                    match self.start(stack, id).await {
                        Ok(()) => Answer::done(format!(
                            "started {name} (pid {})",
                            stack.pid(id).unwrap_or_default()
                        )),
                        Err(why) => Answer::refused(format!("{name} {why}")),
                    }
                }
            },
            Request::Restart { .. } => match watch {
                Watch::Up if self.begin_stop(stack, id, true) => Answer::done(format!(
                    "restarting {name}: stopping it cleanly, then starting it"
                )),
                Watch::Stopping { .. } => {
                    self.child(id).watch = Watch::Stopping { then_start: true };
                    Answer::done(format!("{name} is stopping; it starts again once gone"))
                }
                _ => {
                    self.child(id).crashes.clear();
                    match self.start(stack, id).await {
                        Ok(()) => Answer::done(format!(
                            "started {name} (pid {})",
                            stack.pid(id).unwrap_or_default()
                        )),
                        Err(why) => Answer::refused(format!("{name} {why}")),
                    }
                }
            },
        }
    }

    fn state(&self, stack: &Stack, id: ProcId) -> String {
        let now = Instant::now();
        match self.children.get(&id).map(|c| &c.watch) {
            None | Some(Watch::Up) => {
                if !stack.is_running(id) {
                    // Its end is on its way to the loop.
                    "exited".into()
                } else if stack.pid(id).is_some_and(paused) {
                    "paused".into()
                } else {
                    "running".into()
                }
            }
            Some(Watch::RestartAt(t)) => format!(
                "restarting in {} s",
                t.saturating_duration_since(now).as_secs_f64().ceil() as u64
            ),
            Some(Watch::Down(why)) => format!("down: {why}"),
            Some(Watch::Stopping { .. }) => "stopping".into(),
            Some(Watch::Stopped) => "stopped".into(),
        }
    }

    fn ps(&self, stack: &Stack) -> Answer {
        let now = Instant::now();
        let children = stack
            .ids()
            .map(|id| {
                // A child whose end the loop has seen is not running, even while the
                // task that reaped it is finishing.
                let ended = matches!(
                    self.children.get(&id).map(|c| &c.watch),
                    Some(Watch::Down(_) | Watch::RestartAt(_) | Watch::Stopped)
                );
                let running = stack.is_running(id) && !ended;
                ChildInfo {
                    name: stack.name(id).to_string(),
                    state: self.state(stack, id),
                    pid: stack.pid(id).filter(|_| running),
                    restarts: stack.generation(id).saturating_sub(1),
                    uptime_secs: stack
                        .started_at(id)
                        .map(|t| now.duration_since(t).as_secs()),
                    listens: stack.spec(id).listens.clone(),
                    log: stack.log(id).to_path_buf(),
                }
            })
            .collect();
        Answer {
            ok: true,
            message: String::new(),
            children,
        }
    }
}

/// The process is stopped by a signal (state `T` in /proc).
fn paused(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_and_are_capped() {
        assert_eq!(restart_delay(1), Duration::from_secs(1));
        assert_eq!(restart_delay(2), Duration::from_secs(2));
        assert_eq!(restart_delay(3), Duration::from_secs(4));
        assert_eq!(restart_delay(6), Duration::from_secs(30));
        assert_eq!(restart_delay(1000), Duration::from_secs(30));
    }
}
