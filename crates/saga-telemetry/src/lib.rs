//! Logging, tracing and metrics setup for binaries, and the W3C trace context carried in
//! message headers for libraries.
//!
//! Binaries call [`init`] once and keep the [`Telemetry`] it returns alive: `RUST_LOG`
//! selects what is logged (default `info`); `LOG_FORMAT=json` switches to JSON lines for
//! log shippers; `OTEL_EXPORTER_OTLP_ENDPOINT` turns on the OTLP (gRPC) trace exporter,
//! with the standard `OTEL_*` variables honoured. Without it no exporter is installed
//! and spans cost what a disabled `tracing` span costs.
//!
//! Libraries use `tracing` for their spans and [`propagation`] (without the default
//! features, so no exporter and no gRPC client) to carry a span's context in message
//! headers; nothing here depends on the saga model.

pub mod metrics;
pub mod propagation;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer, Registry};

/// The installed telemetry of a binary: dropping it flushes the spans not yet exported
/// and shuts the exporter down. Keep it alive for the whole `main`.
#[must_use = "dropping the guard shuts the trace exporter down at once"]
#[derive(Debug)]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported (an OTLP endpoint was configured).
    pub fn exporting(&self) -> bool {
        #[cfg(feature = "otlp")]
        return self.provider.is_some();
        #[cfg(not(feature = "otlp"))]
        false
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider.take() {
            // The exporter's gRPC channel runs on the binary's runtime, so the flush
            // must not wait on a thread that runtime needs.
            let shutdown = move || {
                if let Err(e) = provider.shutdown() {
                    eprintln!("flushing traces failed: {e}");
                }
            };
            match tokio_flavor() {
                Some(true) => tokio::task::block_in_place(shutdown),
                _ => shutdown(),
            }
        }
    }
}

/// `Some(true)` inside a multi-threaded tokio runtime.
#[cfg(feature = "otlp")]
fn tokio_flavor() -> Option<bool> {
    tokio::runtime::Handle::try_current()
        .ok()
        .map(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Installs the global subscriber for the binary `service` (its name is the traces'
/// `service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` name one).
/// Call it once, inside the tokio runtime (the OTLP exporter's channel runs on it); a
/// second call installs nothing.
pub fn init(service: &str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let logs = if json {
        fmt::layer().json().with_target(false).boxed()
    } else {
        fmt::layer().with_target(false).boxed()
    };
    #[cfg_attr(not(feature = "otlp"), allow(unused_mut))]
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> =
        vec![logs.with_filter(filter).boxed()];
    #[cfg(feature = "otlp")]
    let (provider, trouble) = match otlp::provider(service) {
        Ok(Some(provider)) => {
            layers.push(otlp::layer(&provider));
            (Some(provider), None)
        }
        Ok(None) => (None, None),
        Err(e) => (None, Some(e)),
    };
    let installed = tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_ok();
    if installed {
        tracing::debug!(service, "logging initialised");
    }
    #[cfg(feature = "otlp")]
    {
        if let Some(e) = trouble {
            tracing::warn!(service, error = %e, "traces are not exported");
        }
        let provider = provider.filter(|_| installed);
        if let Some(p) = &provider {
            opentelemetry::global::set_tracer_provider(p.clone());
            tracing::info!(service, "exporting traces over OTLP");
        }
        Telemetry { provider }
    }
    #[cfg(not(feature = "otlp"))]
    Telemetry {}
}

#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry::KeyValue;
    use opentelemetry_otlp::{SpanExporter, WithExportConfig};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::Resource;
    use tracing::level_filters::LevelFilter;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::{Layer, Registry};

    /// The provider when `OTEL_EXPORTER_OTLP_ENDPOINT` (or its traces-only variant) is
    /// set; the exporter, the batch processor (`OTEL_BSP_*`), the sampler
    /// (`OTEL_TRACES_SAMPLER`, `_ARG`) and the resource (`OTEL_SERVICE_NAME`,
    /// `OTEL_RESOURCE_ATTRIBUTES`) read their standard variables.
    pub(crate) fn provider(
        service: &str,
    ) -> Result<Option<SdkTracerProvider>, opentelemetry_otlp::ExporterBuildError> {
        let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
        if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            return Ok(None);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            // The gRPC channel needs a runtime to live on.
            return Ok(None);
        }
        let exporter = SpanExporter::builder()
            .with_tonic()
            .with_timeout(timeout())
            .build()?;
        Ok(Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource(service))
                .build(),
        ))
    }

    fn timeout() -> std::time::Duration {
        std::env::var("OTEL_EXPORTER_OTLP_TIMEOUT")
            .ok()
            .and_then(|t| t.parse().ok())
            .map(std::time::Duration::from_millis)
            .unwrap_or(opentelemetry_otlp::OTEL_EXPORTER_OTLP_TIMEOUT_DEFAULT)
    }

    /// The environment's resource; the binary's name when it names no service.
    fn resource(service: &str) -> Resource {
        let detected = Resource::builder().build();
        let named = detected
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
        if named {
            detected
        } else {
            Resource::builder()
                .with_service_name(service.to_string())
                .with_attribute(KeyValue::new(
                    "process.executable.name",
                    service.to_string(),
                ))
                .build()
        }
    }

    /// The layer that turns `tracing` spans into OpenTelemetry spans: INFO and above,
    /// whatever `RUST_LOG` says, and never the exporter's own transport (its spans
    /// would feed themselves).
    pub(crate) fn layer(provider: &SdkTracerProvider) -> Box<dyn Layer<Registry> + Send + Sync> {
        let targets = Targets::new()
            .with_default(LevelFilter::INFO)
            .with_target("h2", LevelFilter::OFF)
            .with_target("hyper", LevelFilter::OFF)
            .with_target("hyper_util", LevelFilter::OFF)
            .with_target("tonic", LevelFilter::OFF)
            .with_target("tower", LevelFilter::OFF)
            // ractor's per-message actor spans: not the saga's transitions.
            .with_target("ractor", LevelFilter::OFF)
            .with_target("opentelemetry", LevelFilter::OFF)
            .with_target("opentelemetry_sdk", LevelFilter::OFF)
            .with_target("opentelemetry_otlp", LevelFilter::OFF);
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("saga"))
            .with_filter(targets)
            .boxed()
    }
}
