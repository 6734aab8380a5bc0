//! [`NatsServer`]: a real nats-server with JetStream, private to one test.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::binary::NatsBinary;
use crate::process::ProcessGuard;
use crate::wait::POLL_INTERVAL;
use crate::TestkitError;

/// Default for [`NatsServerBuilder::startup_timeout`]: generous, because tests
/// run in parallel on small (2-core) machines.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Default for [`NatsServerBuilder::stop_timeout`].
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The line nats-server logs once JetStream is up and the client listener is open.
const READY_LINE: &str = "Server is ready";
/// The log line that names the client port (fallback for the ports file).
const LISTEN_LINE: &str = "Listening for client connections on ";
/// How many log lines an error message carries.
const LOG_TAIL_LINES: usize = 40;

/// Options for a [`NatsServer`]; [`NatsServer::start`] uses the defaults.
#[derive(Debug, Clone)]
pub struct NatsServerBuilder {
    binary: Option<PathBuf>,
    extra_config: String,
    sync_always: bool,
    startup_timeout: Duration,
    stop_timeout: Duration,
}

impl Default for NatsServerBuilder {
    fn default() -> Self {
        NatsServerBuilder {
            binary: None,
            extra_config: String::new(),
            sync_always: true,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
        }
    }
}

impl NatsServerBuilder {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Use this binary instead of `$NATS_SERVER_BIN` / `.tools/bin/nats-server`
    /// (it is still version-checked).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Appends top-level lines to the generated config file (e.g.
    /// `"max_payload: 64KB"` or an `accounts { ... }` block). May be called
    /// several times. Do not set `host`, `port` or `jetstream` here: the kit
    /// owns those.
    pub fn extra_config(mut self, config: impl AsRef<str>) -> Self {
        self.extra_config.push_str(config.as_ref());
        self.extra_config.push('\n');
        self
    }

    /// `sync_interval: always` (fsync before every ack), as in production.
    /// On by default; turning it off makes the store fsync every 2 minutes.
    pub fn sync_always(mut self, always: bool) -> Self {
        self.sync_always = always;
        self
    }

    /// How long a start may take before it fails (default 30 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// How long [`NatsServer::stop`] waits after SIGTERM before SIGKILL (default 10 s).
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// Finds and checks the binary, then starts the server on a free port and
    /// waits until it is ready.
    pub fn start(self) -> Result<NatsServer, TestkitError> {
        let binary = match &self.binary {
            Some(path) => NatsBinary::at(path.clone())?,
            None => NatsBinary::locate()?,
        };
        let dir = tempfile::Builder::new()
            .prefix("saga-nats-")
            .tempdir()
            .map_err(|e| TestkitError::io("creating a temporary directory for nats-server", e))?;
        let store_dir = dir.path().join("store");
        let ports_dir = dir.path().join("ports");
        for d in [&store_dir, &ports_dir] {
            fs::create_dir(d)
                .map_err(|e| TestkitError::io(format!("creating {}", d.display()), e))?;
        }
        let mut server = NatsServer {
            process: None,
            port: 0,
            starts: 0,
            binary,
            options: self,
            config_path: dir.path().join("nats.conf"),
            log_path: dir.path().join("nats-server.log"),
            store_dir,
            ports_dir,
            dir,
        };
        server.launch(None)?;
        Ok(server)
    }
}

/// A nats-server child process with JetStream, listening on 127.0.0.1 on a
/// port chosen by the OS, storing into its own temporary directory.
///
/// The generated config has `sync_interval: always`, like `nats.conf`.
/// Dropping the value SIGKILLs the server and deletes the directory (store,
/// config, log). The port and the store survive [`restart`](Self::restart),
/// [`stop`](Self::stop) / [`kill`](Self::kill) + [`start_again`](Self::start_again).
///
/// The API is blocking; from async code it is fine to call it directly in a
/// test (starting takes a few tens of milliseconds).
///
/// ```no_run
/// let mut nats = saga_testkit::NatsServer::start().unwrap();
/// let url = nats.url(); // "nats://127.0.0.1:PORT"
/// nats.kill().unwrap(); // crash
/// nats.start_again().unwrap(); // same port, same data
/// ```
#[derive(Debug)]
pub struct NatsServer {
    process: Option<ProcessGuard>,
    port: u16,
    starts: u32,
    binary: NatsBinary,
    options: NatsServerBuilder,
    config_path: PathBuf,
    log_path: PathBuf,
    store_dir: PathBuf,
    ports_dir: PathBuf,
    // Last: removed after the process is gone (see Drop).
    dir: TempDir,
}

impl NatsServer {
    /// Starts a server with the default options. See [`NatsServerBuilder::start`].
    pub fn start() -> Result<Self, TestkitError> {
        NatsServerBuilder::new().start()
    }

    /// Options to start a server with.
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::new()
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The client address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The JetStream store directory (`store_dir`; the server keeps its data
    /// under `jetstream/` inside it).
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The temporary directory holding config, store and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The generated config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The server's log (stdout and stderr of every start, appended).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        read_from(&self.log_path, 0)
    }

    /// The binary in use.
    pub fn binary(&self) -> &NatsBinary {
        &self.binary
    }

    /// The process id while a server process is up (`None` after stop/kill).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ProcessGuard::pid)
    }

    /// Whether the server process is running (it may be paused).
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ProcessGuard::is_running)
    }

    /// Graceful stop (SIGTERM, then SIGKILL after the stop timeout), waiting
    /// until the process is gone. A no-op if it is not running.
    pub fn stop(&mut self) -> Result<(), TestkitError> {
        if let Some(mut process) = self.process.take() {
            process.terminate(self.options.stop_timeout)?;
        }
        Ok(())
    }

    /// Crash: SIGKILL, waiting until the process is gone (no shutdown, no
    /// flush). This is a process crash: what the server had written survives
    /// in the OS. A no-op if it is not running.
    pub fn kill(&mut self) -> Result<(), TestkitError> {
        if let Some(mut process) = self.process.take() {
            process.sigkill()?;
        }
        Ok(())
    }

    /// Starts the server again after [`stop`](Self::stop) / [`kill`](Self::kill)
    /// (or after it died), on the same port with the same store, and waits
    /// until it is ready.
    pub fn start_again(&mut self) -> Result<(), TestkitError> {
        if let Some(process) = self.process.as_mut() {
            if process.is_running() {
                return Err(TestkitError::AlreadyRunning { pid: process.pid() });
            }
        }
        self.process = None;
        self.launch(Some(self.port))
    }

    /// [`stop`](Self::stop) then [`start_again`](Self::start_again): same
    /// port, same data.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop()?;
        self.start_again()
    }

    /// SIGSTOP: the server freezes (connections stay open, nothing answers).
    pub fn pause(&mut self) -> Result<(), TestkitError> {
        self.process
            .as_mut()
            .ok_or(TestkitError::NotRunning)?
            .sigstop()
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&mut self) -> Result<(), TestkitError> {
        self.process
            .as_mut()
            .ok_or(TestkitError::NotRunning)?
            .sigcont()
    }

    /// Writes the config, spawns the server and waits until it is ready.
    /// `port`: `None` lets the OS choose (and discovers it).
    fn launch(&mut self, port: Option<u16>) -> Result<(), TestkitError> {
        let config = render_config(
            port,
            &self.store_dir,
            self.options.sync_always,
            &self.options.extra_config,
        );
        fs::write(&self.config_path, config)
            .map_err(|e| TestkitError::io(format!("writing {}", self.config_path.display()), e))?;

        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| TestkitError::io(format!("opening {}", self.log_path.display()), e))?;
        writeln!(log, "--- saga-testkit: start #{} ---", self.starts)
            .map_err(|e| TestkitError::io(format!("writing {}", self.log_path.display()), e))?;
        let log_offset = log
            .metadata()
            .map_err(|e| TestkitError::io(format!("reading {}", self.log_path.display()), e))?
            .len();
        let log_err = log
            .try_clone()
            .map_err(|e| TestkitError::io(format!("opening {}", self.log_path.display()), e))?;

        let mut command = Command::new(self.binary.path());
        command
            .arg("-c")
            .arg(&self.config_path)
            .arg("--ports_file_dir")
            .arg(&self.ports_dir)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let mut process = ProcessGuard::spawn(&mut command)?;

        match self.wait_ready(&mut process, port, log_offset) {
            Ok(port) => {
                self.port = port;
                self.process = Some(process);
                Ok(())
            }
            // `process` is dropped here: SIGKILLed and reaped.
            Err(e) => Err(e),
        }
    }

    /// Polls until the server (1) has told us its port, (2) logged that it is
    /// ready, and (3) answers on that port with an INFO saying JetStream is on.
    fn wait_ready(
        &self,
        process: &mut ProcessGuard,
        fixed_port: Option<u16>,
        log_offset: u64,
    ) -> Result<u16, TestkitError> {
        let timeout = self.options.startup_timeout;
        let deadline = Instant::now() + timeout;
        let pid = process.pid();
        let mut port = fixed_port;
        let mut logged_ready = false;
        loop {
            if let Some(status) = process.try_wait()? {
                return Err(TestkitError::ServerExited {
                    pid,
                    status,
                    log: tail(&read_from(&self.log_path, log_offset)),
                });
            }
            let log = read_from(&self.log_path, log_offset);
            if port.is_none() {
                port = port_from_ports_file(&self.ports_dir, pid).or_else(|| port_from_log(&log));
            }
            logged_ready = logged_ready || log.contains(READY_LINE);
            let waiting_for = match port {
                None => "its port (ports file or log)",
                Some(_) if !logged_ready => "\"Server is ready\" in its log",
                Some(p) if jetstream_info(p) => return Ok(p),
                Some(_) => "an INFO with \"jetstream\":true on its port",
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(TestkitError::StartupTimeout {
                    pid,
                    timeout,
                    waiting_for,
                    log: tail(&log),
                });
            }
            std::thread::sleep(POLL_INTERVAL.min(deadline - now));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Kill (and reap) the process before `dir` deletes its store.
        drop(self.process.take());
    }
}

fn render_config(port: Option<u16>, store_dir: &Path, sync_always: bool, extra: &str) -> String {
    let port = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
    let store_dir = quote(&store_dir.to_string_lossy());
    let sync = if sync_always { "always" } else { "2m" };
    format!(
        "# Generated by saga-testkit; see nats.conf at the repo root for the reasoning.\n\
         host: 127.0.0.1\n\
         port: {port}\n\
         max_payload: 1MB\n\
         jetstream {{\n    store_dir: {store_dir}\n    sync_interval: {sync}\n}}\n\
         {extra}"
    )
}

/// A double-quoted string for the NATS config format.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Reads `path` from byte `offset` on; empty if it cannot be read.
fn read_from(path: &Path, offset: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(mut file) = File::open(path) {
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = file.read_to_end(&mut buf);
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[start..].join("\n")
}

/// `--ports_file_dir` makes the server write `<exe>_<pid>.ports` once its
/// listeners are open: `{"nats":["nats://127.0.0.1:PORT"],...}`.
fn port_from_ports_file(dir: &Path, pid: u32) -> Option<u16> {
    let suffix = format!("_{pid}.ports");
    let entries = fs::read_dir(dir).ok()?;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().ends_with(&suffix) {
            // May be half written: then parsing fails and we retry.
            return parse_ports_file(&fs::read_to_string(entry.path()).ok()?);
        }
    }
    None
}

fn parse_ports_file(json: &str) -> Option<u16> {
    let rest = &json[json.find("\"nats\"")?..];
    let rest = &rest[rest.find("nats://")? + "nats://".len()..];
    let host_port = &rest[..rest.find('"')?];
    let (_, port) = host_port.rsplit_once(':')?;
    port.parse().ok().filter(|p| *p != 0)
}

/// "Listening for client connections on 127.0.0.1:PORT".
fn port_from_log(log: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains(LISTEN_LINE))?;
    let addr = line[line.find(LISTEN_LINE)? + LISTEN_LINE.len()..].trim();
    let (_, port) = addr.rsplit_once(':')?;
    port.parse().ok().filter(|p| *p != 0)
}

/// Connects to 127.0.0.1:`port` and checks the server's greeting is a NATS
/// INFO with JetStream enabled.
fn jetstream_info(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .is_err()
    {
        return false;
    }
    let mut line = String::new();
    let mut reader = BufReader::new(stream.take(64 * 1024));
    match reader.read_line(&mut line) {
        Ok(n) if n > 0 => line.starts_with("INFO ") && line.contains("\"jetstream\":true"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ports_file() {
        assert_eq!(
            parse_ports_file(r#"{"nats":["nats://127.0.0.1:42485"]}"#),
            Some(42485)
        );
        assert_eq!(
            parse_ports_file(
                r#"{"nats":["nats://127.0.0.1:4333"],"monitoring":["http://127.0.0.1:8222"]}"#
            ),
            Some(4333)
        );
        assert_eq!(parse_ports_file(r#"{"nats":["nats://127.0.0.1:42"#), None);
        assert_eq!(parse_ports_file(""), None);
    }

    #[test]
    fn parses_listen_line() {
        let log = "[1] 2026/01/01 00:00:00.000000 [INF] Listening for client connections on \
                   127.0.0.1:39001\n[1] ... [INF] Server is ready\n";
        assert_eq!(port_from_log(log), Some(39001));
        assert_eq!(port_from_log("[INF] Starting nats-server\n"), None);
    }

    #[test]
    fn renders_config() {
        let conf = render_config(None, Path::new("/tmp/a \"b\""), true, "debug: true\n");
        assert!(conf.contains("port: -1\n"), "{conf}");
        assert!(conf.contains(r#"store_dir: "/tmp/a \"b\"""#), "{conf}");
        assert!(conf.contains("sync_interval: always"), "{conf}");
        assert!(conf.ends_with("debug: true\n"), "{conf}");
        let conf = render_config(Some(4333), Path::new("/s"), false, "");
        assert!(conf.contains("port: 4333\n"), "{conf}");
        assert!(conf.contains("sync_interval: 2m"), "{conf}");
    }
}
