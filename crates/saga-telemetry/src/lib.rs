//! Logging and tracing setup for binaries (libraries only use `tracing`).
//!
//! `RUST_LOG` selects what is logged (default `info`); `LOG_FORMAT=json` switches to
//! JSON lines for log shippers. Only binaries depend on this crate.

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber for the binary `service`. Safe to call once.
pub fn init(service: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = fmt().with_env_filter(filter).with_target(false);
    let result = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, "logging initialised");
    }
}
