//! The shipped `nats.conf` is what the pinned server accepts, with durable JetStream.

use std::process::Command;

use saga_testkit::{workspace_root, NatsBinary};

#[test]
fn the_shipped_nats_conf_is_valid_and_fsyncs_every_write() {
    let bin = NatsBinary::locate().expect("pinned nats-server (run `make setup`)");
    let conf = workspace_root().join("nats.conf");
    let out = Command::new(bin.path())
        .args(["-c", conf.to_str().unwrap(), "-t"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nats-server rejects nats.conf: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&conf).unwrap();
    let active: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert!(active
        .iter()
        .any(|l| l.starts_with("sync_interval: always")));
}
