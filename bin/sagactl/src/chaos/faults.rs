//! Doing the planned faults to the stack's processes, and restarting whatever ends on
//! its own (that is recorded: it is a finding).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::plan::{PlannedFault, Target};
use super::Voice;
use crate::args::FaultKind;
use crate::stack::{nats_accepts, tail, Exited, Launched, ProcId, Stack, NATS_READY};

/// After a child ended on its own, it is started again this much later.
const RESTART_AFTER_EXIT: Duration = Duration::from_secs(1);

/// One fault as it was done.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub planned: PlannedFault,
    /// The process's name (`saga-worker-2`).
    pub target: String,
    /// The pid it had (None: it was not running).
    pub pid: Option<u32>,
    /// When it was done and when it was over (restarted, resumed), from the start of
    /// the load.
    pub at: Duration,
    pub over_at: Duration,
    /// What went wrong doing it (the signal or the restart failed).
    pub error: Option<String>,
}

/// A child that ended without being asked to.
#[derive(Debug, Clone)]
pub struct UnexpectedExit {
    pub name: String,
    pub status: String,
    /// From the start of the load.
    pub at: Duration,
    /// The last lines of its log.
    pub log_tail: String,
    /// Its life met a `kill-nats` outage or the [`NATS_AFTERMATH`] after it: the
    /// processes exit when they cannot reach NATS (or JetStream) at start.
    pub during_nats_outage: bool,
}

/// How long after a restarted nats-server accepts connections its JetStream may still
/// be too slow for a process that starts (its requests time out).
pub const NATS_AFTERMATH: Duration = Duration::from_secs(10);

/// When nats-server was killed by a fault, and when it accepted connections again.
type Outage = (Instant, Option<Instant>);

/// The times nats-server was down by a fault.
#[derive(Debug, Clone, Default)]
pub struct Outages(Arc<std::sync::Mutex<Vec<Outage>>>);

impl Outages {
    fn begin(&self) {
        if let Ok(mut w) = self.0.lock() {
            w.push((Instant::now(), None));
        }
    }

    fn end(&self) {
        if let Ok(mut w) = self.0.lock() {
            if let Some(last) = w.last_mut() {
                last.1.get_or_insert_with(Instant::now);
            }
        }
    }

    /// A process that lived from `started` to `ended` met an outage or its aftermath.
    pub fn met(&self, started: Instant, ended: Instant) -> bool {
        self.0
            .lock()
            .map(|w| overlaps(&w, started, ended, NATS_AFTERMATH))
            .unwrap_or(false)
    }
}

/// `[started, ended]` meets one of `windows` (an open one lasts until `ended`), each
/// stretched by `aftermath`.
fn overlaps(windows: &[Outage], started: Instant, ended: Instant, aftermath: Duration) -> bool {
    windows
        .iter()
        .any(|(down, up)| *down <= ended && started <= up.map_or(ended, |up| up + aftermath))
}

fn target_id(launched: &Launched, target: Target) -> ProcId {
    match target {
        Target::Worker(i) => launched.workers[i % launched.workers.len()],
        Target::Participant(i) => launched.participants[i % launched.participants.len()],
        Target::Gateway => launched.gateway,
        Target::Nats => launched.nats,
    }
}

/// Does `plan`: each fault at its time, several at once when their times overlap, but
/// never two on the same process at once (a fault waits for the one before it on its
/// target). Returns what was done, in plan order.
pub async fn inject(
    stack: Arc<Mutex<Stack>>,
    launched: Launched,
    nats_addr: SocketAddr,
    plan: Vec<PlannedFault>,
    t0: Instant,
    voice: Voice,
    outages: Outages,
) -> Vec<FaultRecord> {
    let total = plan.len();
    let mut per_target: BTreeMap<ProcId, Arc<Mutex<()>>> = BTreeMap::new();
    let mut tasks = JoinSet::new();
    for planned in plan {
        let id = target_id(&launched, planned.target);
        let turn = per_target.entry(id).or_default().clone();
        let (stack, outages) = (stack.clone(), outages.clone());
        tasks.spawn(async move {
            tokio::time::sleep_until(t0 + planned.at).await;
            let _turn = turn.lock().await;
            let (target, pid) = {
                let s = stack.lock().await;
                (s.name(id).to_string(), s.pid(id))
            };
            let at = t0.elapsed();
            let what = match planned.kind {
                FaultKind::PauseWorker => format!("SIGSTOP {target} for {:?}", planned.hold),
                _ => format!("kill -9 {target}, restart after {:?}", planned.hold),
            };
            voice.line(format_args!(
                "fault {}/{total} at {:.1} s: {what} (pid {})",
                planned.number,
                at.as_secs_f64(),
                pid.map_or_else(|| "none: not running".to_string(), |p| p.to_string())
            ));
            let error = match planned.kind {
                FaultKind::PauseWorker => pause(&stack, id, planned.hold).await,
                FaultKind::KillNats => {
                    outages.begin();
                    let r = kill_and_restart(&stack, id, planned.hold, Some(nats_addr)).await;
                    outages.end();
                    r
                }
                _ => kill_and_restart(&stack, id, planned.hold, None).await,
            }
            .err();
            if let Some(e) = &error {
                voice.line(format_args!("fault {}/{total}: {e}", planned.number));
            }
            FaultRecord {
                planned,
                target,
                pid,
                at,
                over_at: t0.elapsed(),
                error,
            }
        });
    }
    let mut done = Vec::with_capacity(total);
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(r) => done.push(r),
            Err(e) => voice.line(format_args!("a fault's task failed: {e}")),
        }
    }
    done.sort_by_key(|r| r.planned.number);
    done
}

async fn kill_and_restart(
    stack: &Mutex<Stack>,
    id: ProcId,
    down: Duration,
    nats: Option<SocketAddr>,
) -> Result<(), String> {
    stack
        .lock()
        .await
        .kill(id)
        .await
        .map_err(|e| format!("{e:#}"))?;
    tokio::time::sleep(down).await;
    stack
        .lock()
        .await
        .restart(id)
        .await
        .map_err(|e| format!("restarting: {e:#}"))?;
    if let Some(addr) = nats {
        // The next fault must not meet a broker that is still starting.
        let deadline = Instant::now() + NATS_READY;
        while nats_accepts(addr).await.is_none() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "the restarted nats-server did not accept connections within {NATS_READY:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

async fn pause(stack: &Mutex<Stack>, id: ProcId, hold: Duration) -> Result<(), String> {
    stack
        .lock()
        .await
        .signal(id, Signal::SIGSTOP)
        .map_err(|e| format!("{e:#}"))?;
    tokio::time::sleep(hold).await;
    stack
        .lock()
        .await
        .signal(id, Signal::SIGCONT)
        .map_err(|e| format!("{e:#}"))
}

/// What a log says last: from its last error or panic line to the backtrace, else its
/// last lines.
fn last_words(log: &std::path::Path) -> String {
    let text = tail(log, 200);
    let lines: Vec<&str> = text.lines().collect();
    let said = |l: &&str| {
        let l = l.trim_start_matches("  | ");
        l.starts_with("Error:") || l.contains("panicked at") || l.contains(" ERROR ") || {
            // `saga-worker: connecting to NATS ...`: a binary's own last word.
            l.split_once(": ")
                .is_some_and(|(who, _)| !who.contains(' ') && who.starts_with("saga-"))
        }
    };
    let Some(from) = lines.iter().rposition(said) else {
        return lines[lines.len().saturating_sub(10)..].join("\n");
    };
    lines[from..]
        .iter()
        .take_while(|l| !l.contains("backtrace"))
        .filter(|l| l.trim_start_matches("  | ").trim() != "")
        .take(6)
        .copied()
        .collect::<Vec<_>>()
        .join("\n")
}

/// Records every child that ends on its own and starts it again (with its data) a
/// second later, until aborted.
pub async fn restart_exited(
    stack: Arc<Mutex<Stack>>,
    mut exits: mpsc::UnboundedReceiver<Exited>,
    t0: Instant,
    voice: Voice,
    record: Arc<std::sync::Mutex<Vec<UnexpectedExit>>>,
    outages: Outages,
) {
    while let Some(exit) = exits.recv().await {
        let during_nats_outage = outages.met(exit.started, Instant::now());
        let status = exit.status_text();
        voice.line(format_args!(
            "{} exited on its own ({status}); restarting it in {RESTART_AFTER_EXIT:?} (log {})",
            exit.name,
            exit.log.display()
        ));
        if let Ok(mut r) = record.lock() {
            r.push(UnexpectedExit {
                name: exit.name.clone(),
                status,
                at: t0.elapsed(),
                log_tail: last_words(&exit.log),
                during_nats_outage,
            });
        }
        tokio::time::sleep(RESTART_AFTER_EXIT).await;
        let mut s = stack.lock().await;
        // A fault may have restarted it meanwhile.
        if s.generation(exit.id) == exit.generation {
            if let Err(e) = s.restart(exit.id).await {
                voice.line(format_args!("restarting {}: {e:#}", exit.name));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_is_put_down_to_an_outage_its_life_met() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let windows = [(t + s(10), Some(t + s(13))), (t + s(50), None)];
        let met = |from: u64, to: u64| overlaps(&windows, t + s(from), t + s(to), s(10));
        assert!(met(11, 12)); // started and ended while it was down
        assert!(met(0, 11)); // was running when it went down
        assert!(met(20, 21)); // started in the aftermath
        assert!(!met(24, 30)); // started after the aftermath
        assert!(!met(0, 9)); // ended before
        assert!(met(49, 60)); // the open outage
        assert!(!met(30, 40));
    }

    #[test]
    fn the_last_words_of_a_log_skip_the_backtrace() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("payment.log");
        std::fs::write(
            &log,
            "2026-12-01T22:28:48Z  INFO consuming commands\n\
             Error: cannot connect to NATS at nats://127.0.0.1:1: Connection refused\n\
             \n\
             Caused by:\n    0: Connection refused (os error 111)\n\
             \n\
             Stack backtrace:\n   0: anyhow::Error::msg\n   1: main\n",
        )
        .unwrap();
        assert_eq!(
            last_words(&log),
            "  | Error: cannot connect to NATS at nats://127.0.0.1:1: Connection refused\n\
             \x20 | Caused by:\n\
             \x20 |     0: Connection refused (os error 111)"
        );
        std::fs::write(&log, "saga-worker: connecting to NATS: refused\n").unwrap();
        assert_eq!(
            last_words(&log),
            "  | saga-worker: connecting to NATS: refused"
        );
        std::fs::write(&log, "one\ntwo\n").unwrap();
        assert_eq!(last_words(&log), "  | one\n  | two");
    }
}
