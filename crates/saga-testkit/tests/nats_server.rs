//! Runs the real nats-server: needs `scripts/install-nats-server.sh` (or
//! `NATS_SERVER_BIN`) first.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use saga_testkit::{
    process_exists, wait_until, NatsServer, TestkitError, MIN_VERSION, PINNED_VERSION,
};

const GONE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects, reads the server's INFO line, and checks it answers PING.
fn handshake(server: &NatsServer) -> String {
    let stream = TcpStream::connect(server.addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut info = String::new();
    reader.read_line(&mut info).unwrap();
    assert!(info.starts_with("INFO "), "{info}");

    let mut writer = stream;
    writer
        .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
        .unwrap();
    let mut reply = String::new();
    reader.read_line(&mut reply).unwrap();
    assert_eq!(reply, "PONG\r\n");
    writer.shutdown(Shutdown::Both).unwrap();
    info
}

fn connect_refused(server: &NatsServer) -> bool {
    TcpStream::connect(server.addr()).is_err()
}

#[test]
fn starts_with_jetstream_and_accepts_connections() {
    let server = NatsServer::start().unwrap();
    assert!(server.port() > 0);
    assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
    assert!(server.binary().version() >= MIN_VERSION);
    assert!(server.pid().is_some_and(process_exists));

    let info = handshake(&server);
    assert!(info.contains("\"jetstream\":true"), "{info}");
    assert!(
        info.contains(&format!("\"port\":{}", server.port())),
        "{info}"
    );

    // JetStream stores under <store_dir>/jetstream, with fsync on every write.
    wait_until(Duration::from_secs(10), "the jetstream dir", || {
        server.store_dir().join("jetstream").is_dir()
    })
    .unwrap();
    let config = std::fs::read_to_string(server.config_path()).unwrap();
    assert!(config.contains("sync_interval: always"), "{config}");
    assert!(server.log().contains("Server is ready"));
}

#[test]
fn uses_the_pinned_version_by_default() {
    if std::env::var_os(saga_testkit::NATS_SERVER_BIN_ENV).is_some() {
        return; // someone chose another binary on purpose
    }
    let server = NatsServer::start().unwrap();
    assert_eq!(server.binary().version(), PINNED_VERSION);
    assert_eq!(server.binary().path(), saga_testkit::default_binary_path());
}

#[test]
fn restart_keeps_port_and_store() {
    let mut server = NatsServer::start().unwrap();
    let port = server.port();
    let store = server.store_dir().to_path_buf();
    let first_pid = server.pid().unwrap();
    // A marker file stands in for stream data: the store dir must survive.
    let marker = store.join("jetstream").join("marker");
    wait_until(Duration::from_secs(10), "the jetstream dir", || {
        marker.parent().unwrap().is_dir()
    })
    .unwrap();
    std::fs::write(&marker, b"kept").unwrap();

    server.restart().unwrap();

    assert_eq!(server.port(), port);
    assert_eq!(server.store_dir(), store);
    assert_ne!(server.pid(), Some(first_pid));
    wait_until(GONE_TIMEOUT, "the old process to be gone", || {
        !process_exists(first_pid)
    })
    .unwrap();
    assert_eq!(std::fs::read(&marker).unwrap(), b"kept");
    handshake(&server);
    assert_eq!(server.log().matches("Server is ready").count(), 2);
}

#[test]
fn kill_then_start_again_on_the_same_port() {
    let mut server = NatsServer::start().unwrap();
    let port = server.port();
    let pid = server.pid().unwrap();

    server.kill().unwrap();
    assert_eq!(server.pid(), None);
    assert!(!server.is_running());
    assert!(!process_exists(pid), "SIGKILLed server {pid} still exists");
    wait_until(GONE_TIMEOUT, "the port to refuse connections", || {
        connect_refused(&server)
    })
    .unwrap();
    assert!(matches!(server.pause(), Err(TestkitError::NotRunning)));

    server.start_again().unwrap();
    assert_eq!(server.port(), port);
    assert!(server.is_running());
    handshake(&server);

    let err = server.start_again().unwrap_err();
    assert!(matches!(err, TestkitError::AlreadyRunning { .. }), "{err}");
}

#[test]
fn stop_is_graceful_and_idempotent() {
    let mut server = NatsServer::start().unwrap();
    server.stop().unwrap();
    server.stop().unwrap();
    assert_eq!(server.pid(), None);
    assert!(server.log().contains("Server Exiting"), "{}", server.log());
    server.start_again().unwrap();
    handshake(&server);
}

#[test]
fn drop_kills_the_process_and_removes_the_dir() {
    let server = NatsServer::start().unwrap();
    let pid = server.pid().unwrap();
    let dir = server.dir().to_path_buf();
    let addr = server.addr();
    assert!(process_exists(pid));
    assert!(dir.is_dir());

    drop(server);

    // Drop reaps the child, so it is gone at once, not a zombie.
    assert!(!process_exists(pid), "nats-server {pid} survived drop");
    assert!(!dir.exists(), "{} survived drop", dir.display());
    wait_until(GONE_TIMEOUT, "the port to refuse connections", || {
        TcpStream::connect(addr).is_err()
    })
    .unwrap();
}

#[test]
fn two_servers_get_different_ports_and_dirs() {
    let a = NatsServer::start().unwrap();
    let b = NatsServer::start().unwrap();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.store_dir(), b.store_dir());
    assert_ne!(a.pid(), b.pid());
    handshake(&a);
    handshake(&b);
}

#[test]
fn paused_server_does_not_answer_until_resumed() {
    let mut server = NatsServer::start().unwrap();
    server.pause().unwrap();

    // The kernel still accepts the TCP connection, but nobody says INFO.
    let stream = TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut line = String::new();
    let read = BufReader::new(stream).read_line(&mut line);
    assert!(
        read.is_err() || line.is_empty(),
        "paused server answered: {line:?}"
    );

    server.resume().unwrap();
    handshake(&server);
}

#[test]
fn extra_config_is_applied() {
    let server = NatsServer::builder()
        .extra_config("max_payload: 4KB")
        .start()
        .unwrap();
    let info = handshake(&server);
    assert!(info.contains("\"max_payload\":4096"), "{info}");
}

#[test]
fn bad_config_reports_the_server_log() {
    let err = NatsServer::builder()
        .extra_config("this is { not valid")
        .start()
        .unwrap_err();
    assert!(matches!(err, TestkitError::ServerExited { .. }), "{err}");
}

#[test]
fn old_or_missing_binaries_are_refused_with_install_hint() {
    let err = NatsServer::builder()
        .binary("/nonexistent/nats-server")
        .start()
        .unwrap_err();
    let msg = format!("{err:?}");
    assert!(msg.contains("scripts/install-nats-server.sh"), "{msg}");
    assert!(msg.contains("make setup"), "{msg}");

    // Debian's 2.9 (if installed here) is too old for sync_interval.
    let debian = std::path::Path::new("/usr/sbin/nats-server");
    if debian.is_file() {
        let err = NatsServer::builder().binary(debian).start().unwrap_err();
        assert!(matches!(err, TestkitError::BinaryTooOld { .. }), "{err}");
    }
}
