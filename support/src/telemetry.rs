//! Traces, for both binaries: `tracing` spans exported over OTLP/HTTP
//! (protobuf) when an endpoint is configured, and off otherwise (then every
//! function here is a cheap no-op). A trace context crosses process
//! boundaries as a W3C `traceparent` string (`00-<trace>-<span>-<flags>`):
//! in kiosk frames, inside sealed envelopes (events up, commands down), so
//! one trace runs from a visitor's line through the node, the controller and
//! an agent's console, and back with the agent's reply.
//!
//! Spans that take part are made with [`traced_span!`]: it declares two
//! empty fields, `trace_id` and `span_id`, and [`start`] links the span to
//! its remote parent and records both ids, so every log line inside the
//! span carries them.
//!
//! Export runs on the SDK's own thread with a blocking HTTP client: a slow or
//! absent collector never holds up a request. Its queue is bounded (2,048
//! spans); when it is full new spans are dropped, and the SDK says so.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The `[telemetry]` section both binaries' configurations share.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP collector base URL; empty: no trace export.
    pub otlp_endpoint: String,
    /// How long finished spans wait to be sent together.
    pub export_delay_ms: u64,
    /// Deadline of one export request.
    pub export_timeout_ms: u64,
}

impl TelemetryConfig {
    /// The exporter settings, if export is on.
    pub fn otlp(
        &self,
        service: &str,
        instance: &str,
        targets: &'static [&'static str],
    ) -> Option<Otlp> {
        (!self.otlp_endpoint.is_empty()).then(|| Otlp {
            endpoint: self.otlp_endpoint.clone(),
            service: service.to_owned(),
            instance: instance.to_owned(),
            targets,
            export_delay: Duration::from_millis(self.export_delay_ms.max(1)),
            timeout: Duration::from_millis(self.export_timeout_ms.max(1)),
        })
    }
}

/// Where and how to export traces.
#[derive(Debug, Clone)]
pub struct Otlp {
    /// The collector's base URL (`http://collector:4318`); spans go to
    /// `<endpoint>/v1/traces`.
    pub endpoint: String,
    /// `service.name` of every span (`edgedesk-edge-node`, ...).
    pub service: String,
    /// `service.instance.id` (the node id), if any.
    pub instance: String,
    /// Targets (crate names) whose INFO-and-above spans are exported,
    /// whatever the log level; spans of libraries are not.
    pub targets: &'static [&'static str],
    /// How long spans wait to be sent in a batch.
    pub export_delay: Duration,
    /// Deadline of one export request.
    pub timeout: Duration,
}

/// Keeps the exporter; [`Telemetry::shutdown`] sends what is still queued.
#[must_use = "shut it down at exit, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flush and stop the exporter (call outside any async runtime).
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("telemetry: flushing spans at exit failed: {e}");
        }
    }
}

/// Install the global subscriber: log lines (text or JSON) filtered by
/// `level` (`RUST_LOG` wins), plus span export when `otlp` is given. An
/// invalid endpoint is an error (the caller exits with a configuration error).
pub fn init(level: &str, json: bool, otlp: Option<Otlp>) -> Result<Telemetry, String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Each layer has its own filter: the log level does not decide which
    // spans are exported.
    // Colours only on a terminal: no escape codes in files and journals.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = if json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    let targets = otlp.as_ref().map(|o| o.targets).unwrap_or_default();
    let provider = otlp.map(provider).transpose()?;
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("edgedesk"))
            .with_location(false)
            .with_threads(false)
            .with_filter(tracing_subscriber::filter::filter_fn(move |meta| {
                *meta.level() <= tracing::Level::INFO
                    && targets.iter().any(|t| meta.target().starts_with(t))
            }))
    });
    tracing_subscriber::registry().with(fmt).with(otel).init();
    Ok(Telemetry { provider })
}

fn provider(o: Otlp) -> Result<SdkTracerProvider, String> {
    let endpoint = format!("{}/v1/traces", o.endpoint.trim_end_matches('/'));
    let url: reqwest::Url = endpoint
        .parse()
        .map_err(|e| format!("telemetry.otlp_endpoint {:?}: {e}", o.endpoint))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "telemetry.otlp_endpoint {:?}: the scheme must be http or https",
            o.endpoint
        ));
    }
    let client = reqwest::blocking::Client::builder()
        .timeout(o.timeout)
        .build()
        .map_err(|e| format!("telemetry: HTTP client: {e}"))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(BlockingHttp(client))
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(o.timeout)
        .build()
        .map_err(|e| format!("telemetry: OTLP exporter: {e}"))?;
    let batch = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(o.export_delay)
                .with_max_queue_size(2048)
                .build(),
        )
        .build();
    let mut resource = Resource::builder()
        .with_service_name(o.service)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ));
    if !o.instance.is_empty() {
        resource = resource.with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            o.instance,
        ));
    }
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_resource(resource.build())
        .build())
}

/// The exporter's HTTP client: reqwest's blocking client, called on the
/// batch processor's own thread (no async runtime there).
#[derive(Debug)]
struct BlockingHttp(reqwest::blocking::Client);

#[async_trait::async_trait]
impl HttpClient for BlockingHttp {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let mut req = self
            .0
            .request(parts.method, parts.uri.to_string())
            .body(body.to_vec());
        for (name, value) in &parts.headers {
            req = req.header(name, value);
        }
        let res = req.send()?;
        let mut out = Response::builder().status(res.status().as_u16());
        for (name, value) in res.headers() {
            out = out.header(name.as_str(), value.as_bytes());
        }
        let body = res.bytes()?;
        Ok(out.body(Bytes::from(body.to_vec()))?)
    }
}

/// An INFO span named `$name` with the given fields plus the empty
/// `trace_id` and `span_id` that [`start`] records, linked to the remote
/// parent `$parent` (an `Option<&str>` W3C `traceparent`):
/// `traced_span!("edge.command", cmd.trace.as_deref(), kind = cmd.body.kind())`.
#[macro_export]
macro_rules! traced_span {
    ($name:literal, $parent:expr $(, $($field:tt)+)?) => {{
        let span = ::tracing::info_span!(
            $name,
            $($($field)+,)?
            trace_id = ::tracing::field::Empty,
            span_id = ::tracing::field::Empty
        );
        $crate::telemetry::start(&span, $parent);
        span
    }};
}

/// Link `span` to the remote parent in `traceparent` (if it is a valid W3C
/// trace context) and record its `trace_id` and `span_id` fields. Call it
/// right after creating the span. Without export nothing happens.
pub fn start(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(parent) = traceparent.and_then(parse) {
        // Fails only when export is off (no layer): nothing to link then.
        let _ = span.set_parent(parent);
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", tracing::field::display(sc.trace_id()));
        span.record("span_id", tracing::field::display(sc.span_id()));
    }
}

/// The W3C `traceparent` of `span`, to carry across a process boundary;
/// `None` when export is off.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let sc = span.context().span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// [`traceparent`] of the current span.
pub fn current() -> Option<String> {
    traceparent(&tracing::Span::current())
}

/// The longest `traceparent` taken from outside (version 00 is 55 chars;
/// later versions may append fields).
pub const MAX_TRACEPARENT: usize = 128;

/// Parse a `traceparent`; `None` for anything that is not a valid context
/// (wrong shape, all-zero ids, too long): the span then starts a new trace.
fn parse(traceparent: &str) -> Option<opentelemetry::Context> {
    if traceparent.len() > MAX_TRACEPARENT || !well_formed(traceparent) {
        return None;
    }
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The W3C shape: `vv-<32 hex>-<16 hex>-ff` in lower-case hex, version not
/// `ff`; version 00 has exactly these four fields.
fn well_formed(s: &str) -> bool {
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && (parts[0] != "00" || parts.len() == 4)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
}

/// Whether `traceparent` is a valid W3C trace context.
pub fn is_valid(traceparent: &str) -> bool {
    parse(traceparent).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_trace_contexts_are_taken() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_valid(good));
        for (case, bad) in [
            ("empty", ""),
            ("garbage", "hello"),
            (
                "zero trace id",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            ),
            (
                "zero span id",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            ),
            (
                "short trace id",
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            ),
            (
                "upper case",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            ),
            (
                "extra field in version 00",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            ),
            (
                "version ff",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ] {
            assert!(!is_valid(bad), "{case}: {bad}");
        }
        let long = format!("{good}-{}", "a".repeat(200));
        assert!(!is_valid(&long), "over {MAX_TRACEPARENT} characters");
    }

    #[test]
    fn without_export_spans_carry_no_context() {
        let span = crate::traced_span!(
            "x",
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            field = 1
        );
        assert_eq!(traceparent(&span), None);
    }
}
