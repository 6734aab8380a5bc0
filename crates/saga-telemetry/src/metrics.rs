//! The Prometheus `/metrics` endpoint of a binary.
//!
//! Libraries record through the `metrics` facade (counters, gauges, histograms and their
//! descriptions) and never depend on an exporter; a binary flattens [`MetricsArgs`] into
//! its arguments and calls [`MetricsArgs::install`] once, inside its tokio runtime. With
//! no `--metrics-addr` nothing is installed and every record is a no-op.
#![cfg(feature = "prometheus")]

use std::net::SocketAddr;

use metrics_exporter_prometheus::{BuildError, PrometheusBuilder};

/// Bucket bounds of every histogram, in seconds: every histogram of the runtime
/// measures a duration, from a fast step (milliseconds) to a saga that runs for
/// minutes.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0,
];

/// `--metrics-addr` / `METRICS_ADDR`, flattened into a binary's arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 0.0.0.0:9464); off when
    /// unset.
    #[arg(long = "metrics-addr", env = "METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

impl MetricsArgs {
    /// Whether an endpoint is asked for (samplers of broker figures run only then).
    pub fn enabled(&self) -> bool {
        self.metrics_addr.is_some()
    }

    /// Installs the global recorder and starts the HTTP listener on the current tokio
    /// runtime when an address is given. Fails when the address cannot be bound or a
    /// recorder is already installed.
    pub fn install(&self, service: &str) -> Result<(), BuildError> {
        let Some(addr) = self.metrics_addr else {
            return Ok(());
        };
        PrometheusBuilder::new()
            .with_http_listener(addr)
            .set_buckets(SECONDS_BUCKETS)?
            .install()?;
        tracing::info!(service, %addr, "serving Prometheus metrics on /metrics");
        Ok(())
    }
}
