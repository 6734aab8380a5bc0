//! A real Prometheus server for the metrics tests: its own process (Debian's package,
//! `scripts/install-prometheus.sh`), a temporary config and storage, a free port,
//! scraping the given targets every second; killed and cleaned on drop.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::free_port;

/// A running `prometheus`.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    /// `127.0.0.1:<port>` of its HTTP API.
    pub addr: String,
    /// Config, storage and log.
    pub dir: tempfile::TempDir,
}

/// The `prometheus` executable: `PROMETHEUS_BIN`, or the Debian package's.
pub fn binary() -> PathBuf {
    let path = std::env::var_os("PROMETHEUS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-prometheus.sh (done by `make test`)",
        path.display()
    );
    path
}

impl Prometheus {
    /// Starts a server scraping `targets` (`(job, host:port)`) every second and waits
    /// until it is ready.
    pub async fn start(targets: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let mut child = Command::new(binary())
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!("--web.listen-address={addr}"))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .stdout(Stdio::null())
                .stderr(log.try_clone().expect("log file"))
                .spawn()
                .expect("spawn prometheus");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    // The port was taken between probing and binding: try another.
                    break;
                }
                if get(&addr, "/-/ready").is_some_and(|(status, _)| status == 200) {
                    return Self { child, addr, dir };
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "prometheus not ready within 60s: {}",
                    std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        panic!(
            "prometheus did not start: {}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
    }

    /// An instant query through `/api/v1/query`: the value of the first sample of the
    /// result (a vector or a scalar), `None` when the result is empty or not a number.
    pub fn query(&self, promql: &str) -> Option<f64> {
        let (status, body) = get(
            &self.addr,
            &format!("/api/v1/query?query={}", encode(promql)),
        )?;
        assert_eq!(status, 200, "query {promql}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let data = &v["data"];
        let value = match data["resultType"].as_str()? {
            "vector" => data["result"].get(0)?["value"][1].clone(),
            "scalar" => data["result"][1].clone(),
            _ => return None,
        };
        value.as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on `addr` (HTTP/1.0, so the server closes the connection after the
/// body): the status and the body, `None` when nothing answers.
pub fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
