//! One tracing set-up for every service: `RUST_LOG`-style filter, text or JSON lines on stdout,
//! and — when `OTEL_EXPORTER_OTLP_ENDPOINT` is set — every span exported over OTLP/HTTP with
//! the service's name, W3C trace context carried in and out ([`continue_trace`], [`inject`]).
//!
//! Services log identifiers (patient ids, account ids, event ids), never names, emails or
//! addresses: the log pipeline is not a place for personal data, and neither are span fields.

use std::{
    io::IsTerminal,
    sync::atomic::{AtomicBool, Ordering},
};

use clap::Args;
use opentelemetry::{propagation::TextMapCompositePropagator, trace::TracerProvider as _, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider, Resource};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

/// Logging and tracing settings, flattened into each service's settings.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Filter directives, e.g. `info,sqlx=warn` (same syntax as `RUST_LOG`).
    #[arg(long, env = "RUST_LOG", default_value = "info,sqlx=warn,h2=warn,tower=warn")]
    pub log_filter: String,
    /// Emit JSON lines instead of human-readable text (for log shippers).
    #[arg(long, env = "LOG_JSON", default_value_t = false)]
    pub log_json: bool,
    /// OTLP/HTTP endpoint of a trace backend (e.g. `http://127.0.0.1:4318`); unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

impl LogArgs {
    /// Text logs at `info`, no trace export (tests, tools).
    pub fn quiet() -> Self {
        Self { log_filter: "info".into(), log_json: false, otlp_endpoint: None }
    }
}

/// Whether [`init`] installed a trace exporter. Without one there is no trace context to carry,
/// so [`continue_trace`] and [`inject`] return at once instead of looking for it.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (a trace context is worth carrying). Only [`init`] installs the
/// OpenTelemetry layer, and it sets this with it; a subscriber built elsewhere with that layer
/// would need to set it too.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The `traceparent` header (named once, not parsed again at each use).
pub static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// Flushes exported spans when dropped (keep it for the life of `main`).
#[must_use = "spans are flushed when this is dropped"]
pub struct Telemetry(Option<SdkTracerProvider>);

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            if let Err(err) = provider.shutdown() {
                eprintln!("trace export did not shut down cleanly: {err}");
            }
        }
    }
}

/// Installs the global subscriber (and the trace exporter, when configured) for `service`.
/// Call once, from `main`.
pub fn init(args: &LogArgs, service: &'static str) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
    ]));
    let filter = EnvFilter::try_new(&args.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = args.otlp_endpoint.as_deref().and_then(|endpoint| match exporter(endpoint, service) {
        Ok(provider) => Some(provider),
        Err(err) => {
            eprintln!("no trace export to {endpoint}: {err:#}");
            None
        }
    });
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
    let traces = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    let logs = if args.log_json {
        fmt::layer().json().flatten_event(true).boxed()
    } else {
        // Colours only for a person at a terminal, never into log files.
        fmt::layer().with_ansi(std::io::stdout().is_terminal()).boxed()
    };
    tracing_subscriber::registry().with(filter).with(logs).with(traces).init();
    Telemetry(provider)
}

fn exporter(endpoint: &str, service: &'static str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_attributes([KeyValue::new("service.name", service)]).build())
        .build())
}

/// Makes `span` a child of the W3C trace context in `headers` (a `traceparent`), if any.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if !exporting() {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(parent);
}

/// Writes the current span's context into `headers` as `traceparent` when spans are recorded;
/// leaves them alone otherwise.
pub fn inject(headers: &mut http::HeaderMap) {
    if !exporting() {
        return;
    }
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut HeaderInjector(headers)));
}

/// Makes `span` a child of a stored W3C `traceparent` (an outbox row's, a Kafka record's).
pub fn continue_trace_from(span: &tracing::Span, traceparent: &str) {
    if let Ok(value) = http::HeaderValue::from_str(traceparent) {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", value);
        continue_trace(span, &headers);
    }
}

/// The current span's context as a W3C `traceparent`, when spans are recorded.
pub fn current_traceparent() -> Option<String> {
    let mut headers = http::HeaderMap::new();
    inject(&mut headers);
    headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// The trace id of a request's valid W3C `traceparent`.
pub fn trace_id(headers: &http::HeaderMap) -> Option<&str> {
    trace_id_of(headers.get(&TRACEPARENT)?.to_str().ok()?)
}

/// The trace id of a valid W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero).
pub fn trace_id_of(value: &str) -> Option<&str> {
    let mut parts = value.split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let valid = version == "00"
        && parts.next().is_none()
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0');
    valid.then_some(trace)
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl opentelemetry::propagation::Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (http::HeaderName::try_from(key), http::HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_only_from_valid_traceparents() {
        let id = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("traceparent", v.parse().unwrap());
            trace_id(&h).map(str::to_owned)
        };
        assert_eq!(
            id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "garbage",
        ] {
            assert_eq!(id(bad), None, "{bad}");
        }
    }
}
