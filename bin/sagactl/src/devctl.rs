//! Control of a running `sagactl dev` from another terminal.
//!
//! The stack listens on a Unix socket in its data directory (`DATA/control.sock`). A
//! request is one JSON line, the answer one JSON line; nothing else goes over it. Logs
//! are read straight from `DATA/logs/<name>.log`, so `sagactl dev logs` also works once
//! the stack has stopped.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::args::{DevControl, DevDir, DevSignal};
use crate::output::outln;
use crate::Output;

/// The socket's name in the data directory.
pub const SOCKET: &str = "control.sock";
/// How long a client waits for the stack's answer (a clean stop may take the grace
/// period, but it is answered at once and goes on in the background).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// What a client asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Ps,
    Signal { name: String, signal: DevSignal },
    Stop { name: String },
    Start { name: String },
    Restart { name: String },
}

/// The stack's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    /// What was done, or why not.
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub children: Vec<ChildInfo>,
}

impl Answer {
    pub fn done(message: impl Into<String>) -> Self {
        Self {
            ok: true,
            message: message.into(),
            children: Vec::new(),
        }
    }

    pub fn refused(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            message: message.into(),
            children: Vec::new(),
        }
    }
}

/// One line of `sagactl dev ps`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildInfo {
    pub name: String,
    /// `running`, `paused`, `restarting in 2s`, `stopping`, `stopped`, `down: ...`.
    pub state: String,
    pub pid: Option<u32>,
    /// How many times it was started again.
    pub restarts: u64,
    pub uptime_secs: Option<u64>,
    /// What it listens on, if anything.
    pub listens: Option<String>,
    pub log: PathBuf,
}

/// A request on its way to the stack's loop, with where its answer goes.
#[derive(Debug)]
pub struct Call {
    pub request: Request,
    pub answer: oneshot::Sender<Answer>,
}

/// The socket path of the stack whose data is in `data`.
pub fn socket_path(data: &Path) -> PathBuf {
    data.join(SOCKET)
}

/// Binds the control socket of the stack in `data`: refused when another `sagactl dev`
/// answers on it; a socket left by one that died is replaced.
pub fn bind(data: &Path) -> Result<UnixListener> {
    let path = socket_path(data);
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            bail!(
                "another sagactl dev is running with data in {} (it answers on {}); stop it \
                 or pass another --data-dir",
                data.display(),
                path.display()
            );
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("removing the stale control socket {}", path.display()))?;
    }
    UnixListener::bind(&path)
        .with_context(|| format!("listening on the control socket {}", path.display()))
}

/// Accepts clients and hands their requests to the stack's loop until it goes away.
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<Call>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            let _ = answer_one(stream, calls).await;
        });
    }
}

async fn answer_one(stream: UnixStream, calls: mpsc::Sender<Call>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::time::timeout(ANSWER_WITHIN, BufReader::new(read).read_line(&mut line))
        .await
        .context("no request")??;
    let answer = match serde_json::from_str::<Request>(line.trim()) {
        Err(e) => Answer::refused(format!("bad request: {e}")),
        Ok(request) => {
            let (tx, rx) = oneshot::channel();
            calls
                .send(Call {
                    request,
                    answer: tx,
                })
                .await
                .map_err(|_| anyhow!("the stack is stopping"))?;
            rx.await
                .unwrap_or_else(|_| Answer::refused("the stack is stopping"))
        }
    };
    let mut out = serde_json::to_vec(&answer)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

/// Sends one request to the stack in `data` and returns its answer.
pub async fn ask(data: &Path, request: &Request) -> Result<Answer> {
    let path = socket_path(data);
    let stream = UnixStream::connect(&path).await.map_err(|e| {
        anyhow!(
            "no sagactl dev is running with data in {} (cannot reach {}: {e}); start one \
             with `sagactl dev`, or pass its --data-dir",
            data.display(),
            path.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut answer = String::new();
    tokio::time::timeout(ANSWER_WITHIN, BufReader::new(read).read_line(&mut answer))
        .await
        .map_err(|_| anyhow!("sagactl dev did not answer within {ANSWER_WITHIN:?}"))??;
    serde_json::from_str(answer.trim()).with_context(|| format!("bad answer `{answer}`"))
}

/// `sagactl dev ps|kill|stop|start|restart|logs`.
pub async fn run(out: Output, c: DevControl) -> Result<ExitCode> {
    let (request, dir) = match c {
        DevControl::Logs {
            name,
            follow,
            tail,
            dir,
        } => return logs(&dir, &name, follow, tail).await,
        DevControl::Ps(dir) => (Request::Ps, dir),
        DevControl::Kill { name, signal, dir } => (Request::Signal { name, signal }, dir),
        DevControl::Stop { name, dir } => (Request::Stop { name }, dir),
        DevControl::Start { name, dir } => (Request::Start { name }, dir),
        DevControl::Restart { name, dir } => (Request::Restart { name }, dir),
    };
    let answer = ask(&dir.data_dir, &request).await?;
    if !answer.ok {
        bail!("{}", answer.message);
    }
    if out.json {
        outln!("{}", serde_json::to_string_pretty(&answer)?);
    } else if matches!(request, Request::Ps) {
        outln!("{}", ps_table(&answer.children).trim_end());
    } else {
        outln!("{}", answer.message);
    }
    Ok(ExitCode::SUCCESS)
}

/// The `ps` table.
pub fn ps_table(children: &[ChildInfo]) -> String {
    let rows: Vec<[String; 6]> = children
        .iter()
        .map(|c| {
            [
                c.name.clone(),
                c.state.clone(),
                c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                c.restarts.to_string(),
                c.uptime_secs.map(uptime).unwrap_or_else(|| "-".into()),
                c.listens.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let head = ["NAME", "STATE", "PID", "RESTARTS", "UPTIME", "LISTENS"];
    let mut widths = head.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let mut text = String::new();
    for r in std::iter::once(head.map(String::from)).chain(rows) {
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// `3h04m`, `2m05s`, `42s`.
pub fn uptime(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// `sagactl dev logs NAME [-f] [-n N]`.
async fn logs(dir: &DevDir, name: &str, follow: bool, tail: Option<usize>) -> Result<ExitCode> {
    let logs = dir.data_dir.join("logs");
    let path = logs.join(format!("{name}.log"));
    if !path.is_file() {
        let mut known: Vec<String> = std::fs::read_dir(&logs)
            .map(|d| {
                d.filter_map(|e| {
                    let n = e.ok()?.file_name().into_string().ok()?;
                    n.strip_suffix(".log").map(str::to_string)
                })
                .collect()
            })
            .unwrap_or_default();
        known.sort();
        if known.is_empty() {
            bail!(
                "no logs in {} (is --data-dir the stack's data directory?)",
                logs.display()
            );
        }
        bail!(
            "no log of `{name}` in {}; there are: {}",
            logs.display(),
            known.join(", ")
        );
    }
    let mut file =
        std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut text = Vec::new();
    file.read_to_end(&mut text)?;
    let mut pos = text.len() as u64;
    let shown = match tail {
        None => &text[..],
        Some(n) => last_lines(&text, n),
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(shown)?;
    stdout.flush()?;
    drop(stdout);
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    // Polled like `tail -f` without inotify: a log grows by whole lines in bursts.
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(_) => continue,
        };
        if len < pos {
            // A new `sagactl dev` started over with the same data directory.
            file = std::fs::File::open(&path)?;
            pos = 0;
        }
        if len == pos {
            continue;
        }
        file.seek(SeekFrom::Start(pos))?;
        let mut chunk = Vec::new();
        file.read_to_end(&mut chunk)?;
        pos += chunk.len() as u64;
        let mut stdout = std::io::stdout().lock();
        if stdout
            .write_all(&chunk)
            .and_then(|_| stdout.flush())
            .is_err()
        {
            // The reader went away (`| head`).
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// The last `n` lines of `text`.
fn last_lines(text: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_keeps_the_tail() {
        let t = b"a\nb\nc\n";
        assert_eq!(last_lines(t, 2), b"b\nc\n");
        assert_eq!(last_lines(t, 3), t);
        assert_eq!(last_lines(t, 9), t);
        assert_eq!(last_lines(t, 0), b"");
        assert_eq!(last_lines(b"a\nb", 1), b"b");
    }

    #[test]
    fn uptime_reads_like_a_clock() {
        assert_eq!(uptime(42), "42s");
        assert_eq!(uptime(125), "2m05s");
        assert_eq!(uptime(3 * 3600 + 4 * 60 + 9), "3h04m");
    }

    #[test]
    fn requests_round_trip_as_json_lines() {
        let r = Request::Signal {
            name: "saga-worker-1".into(),
            signal: DevSignal::Stop,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"op":"signal","name":"saga-worker-1","signal":"Stop"}"#
        );
        assert!(matches!(
            serde_json::from_str::<Request>(&text).unwrap(),
            Request::Signal {
                signal: DevSignal::Stop,
                ..
            }
        ));
    }

    #[test]
    fn ps_lines_up_its_columns() {
        let c = |name: &str, state: &str, pid| ChildInfo {
            name: name.into(),
            state: state.into(),
            pid,
            restarts: 0,
            uptime_secs: pid.map(|_| 5),
            listens: None,
            log: PathBuf::new(),
        };
        let t = ps_table(&[
            c("nats-server", "running", Some(10)),
            c("hotel", "stopped", None),
        ]);
        assert_eq!(
            t,
            "NAME         STATE    PID  RESTARTS  UPTIME  LISTENS\n\
             nats-server  running  10   0         5s      -\n\
             hotel        stopped  -    0         -       -\n"
        );
    }
}
