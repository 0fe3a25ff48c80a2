//! Logs and traces shared by every service.
//!
//! Spans come from `tracing`; the `tracing-opentelemetry` layer gives them W3C
//! trace context, so a call's trace runs from the MCP request (its `traceparent`
//! header) through the JetStream command's headers to the worker and on to the
//! upstream request. Spans are exported over OTLP/HTTP only when an endpoint is
//! configured; the trace context is propagated either way.

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, filter::Targets, fmt, prelude::*};

use crate::config::LogFormat;

/// A trace context received from a client or a message (re-exported so services
/// need no OpenTelemetry dependency of their own).
pub use opentelemetry::Context as TraceContext;

/// W3C trace context header names (one place for the fact).
pub const HEADER_TRACEPARENT: &str = "traceparent";
pub const HEADER_TRACESTATE: &str = "tracestate";

/// Flushes exported spans when dropped (keep it alive for the process's lifetime).
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("flushing traces failed: {err}");
        }
    }
}

/// Installs the global subscriber once; later calls are no-ops (tests, `tengine dev`).
/// `otlp_endpoint` is the collector's base URL (`http://host:4318`); empty: no export.
pub fn init(format: LogFormat, otlp_endpoint: &str, service: &'static str) -> TelemetryGuard {
    install(format, otlp_endpoint, service, "info,sqlx=warn", false)
}

/// For tests: logs go through the test harness's capture (`RUST_LOG`, default warn);
/// trace context is built exactly as in the services.
pub fn init_for_tests() {
    let guard = install(LogFormat::Text, "", "tengine-tests", "warn", true);
    std::mem::forget(guard);
}

fn install(
    format: LogFormat,
    otlp_endpoint: &str,
    service: &'static str,
    default_filter: &str,
    test_writer: bool,
) -> TelemetryGuard {
    let mut builder =
        SdkTracerProvider::builder().with_resource(Resource::builder().with_service_name(service).build());
    let mut exporting = false;
    if !otlp_endpoint.is_empty() {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        let endpoint = format!("{}/v1/traces", otlp_endpoint.trim_end_matches('/'));
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(&endpoint)
            .with_timeout(std::time::Duration::from_secs(5))
            .with_headers(Default::default())
            .build()
        {
            Ok(exporter) => {
                builder = builder.with_batch_exporter(exporter);
                exporting = true;
            }
            Err(err) => eprintln!("OTLP export to {endpoint} disabled: {err}"),
        }
    }
    let provider = builder.build();
    let tracer = provider.tracer(service);
    // Trace context is built for Tengine's own spans whatever the log filter says,
    // so that propagation does not depend on the log level. Each poll of a call's
    // futures enters and leaves its spans: no OpenTelemetry context is activated
    // on entry (trace context is read from the span itself, see `onward`) and no
    // busy/idle time is kept, which a profile at full load showed as most of the
    // layer's cost. Location and thread attributes only when spans are exported.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_context_activation(false)
        .with_tracked_inactivity(false)
        .with_location(exporting)
        .with_threads(exporting)
        .with_filter(Targets::new().with_target("tengine", tracing::Level::INFO));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let logs = match (format, test_writer) {
        (_, true) => fmt::layer().with_test_writer().with_filter(filter).boxed(),
        (LogFormat::Json, false) => fmt::layer().json().with_filter(filter).boxed(),
        // Colours only on a terminal: a log file or a journal would keep the escape codes.
        (LogFormat::Text, false) => fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .with_filter(filter)
            .boxed(),
    };
    let installed = tracing_subscriber::registry().with(logs).with(otel).try_init().is_ok();
    if installed {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    }
    TelemetryGuard {
        provider: (installed && exporting).then_some(provider),
    }
}

/// Reads trace context from HTTP headers (an MCP request).
pub fn extract_http(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HttpHeaders(headers))
}

/// Reads trace context from a NATS message's headers (a queued command).
pub fn extract_nats(headers: Option<&async_nats::HeaderMap>) -> Context {
    match headers {
        Some(headers) => TraceContextPropagator::new().extract(&NatsHeaders(headers)),
        None => Context::new(),
    }
}

/// Makes `span` a child of the remote context when it carries a valid trace.
pub fn adopt(span: &tracing::Span, remote: Context) {
    if remote.span().span_context().is_valid() {
        let _ = span.set_parent(remote);
    }
}

/// The trace context to send onward from `span`: its own when it has one,
/// otherwise the remote context it was given (passed through unchanged).
fn onward(span: &tracing::Span, fallback: &Context) -> Context {
    let own = span.context();
    if own.span().span_context().is_valid() {
        own
    } else {
        fallback.clone()
    }
}

/// `traceparent`/`tracestate` for a NATS message sent on behalf of `span`.
pub fn inject_nats(span: &tracing::Span, fallback: &Context, headers: &mut async_nats::HeaderMap) {
    TraceContextPropagator::new().inject_context(&onward(span, fallback), &mut NatsHeadersMut(headers));
}

/// `traceparent`/`tracestate` for an HTTP request sent on behalf of `span`.
pub fn inject_http(span: &tracing::Span, fallback: &Context, headers: &mut http::HeaderMap) {
    TraceContextPropagator::new().inject_context(&onward(span, fallback), &mut HttpHeadersMut(headers));
}

/// The trace id `span` belongs to (hex), for logs and answers; empty when none.
pub fn trace_id(span: &tracing::Span, fallback: &Context) -> String {
    let cx = onward(span, fallback);
    let span_context = cx.span().span_context().clone();
    if span_context.is_valid() {
        span_context.trace_id().to_string()
    } else {
        String::new()
    }
}

struct HttpHeaders<'a>(&'a http::HeaderMap);
struct HttpHeadersMut<'a>(&'a mut http::HeaderMap);
struct NatsHeaders<'a>(&'a async_nats::HeaderMap);
struct NatsHeadersMut<'a>(&'a mut async_nats::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

impl Injector for HttpHeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (http::HeaderName::try_from(key), http::HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

impl Extractor for NatsHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

impl Injector for NatsHeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_a_remote_trace_through_without_a_subscriber() {
        let mut incoming = http::HeaderMap::new();
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        incoming.insert(HEADER_TRACEPARENT, parent.parse().expect("valid header"));
        let remote = extract_http(&incoming);
        let span = tracing::Span::none();
        let mut nats = async_nats::HeaderMap::new();
        inject_nats(&span, &remote, &mut nats);
        assert_eq!(nats.get(HEADER_TRACEPARENT).map(|v| v.as_str()), Some(parent));
        assert_eq!(trace_id(&span, &remote), "0af7651916cd43dd8448eb211c80319c");
        let mut outgoing = http::HeaderMap::new();
        inject_http(&span, &extract_nats(Some(&nats)), &mut outgoing);
        assert_eq!(
            outgoing.get(HEADER_TRACEPARENT).and_then(|v| v.to_str().ok()),
            Some(parent)
        );
    }

    #[test]
    fn ignores_a_malformed_traceparent() {
        let mut incoming = http::HeaderMap::new();
        incoming.insert(HEADER_TRACEPARENT, "00-nothex-zz-01".parse().expect("valid header"));
        let remote = extract_http(&incoming);
        assert_eq!(trace_id(&tracing::Span::none(), &remote), "");
    }
}
