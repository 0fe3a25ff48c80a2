//! Prometheus metrics: every metric's name is defined here once, recorded with the
//! `metrics` facade where it happens, and served as text on `GET /metrics` by
//! every service (the ingress on its listener, worker and projector on their
//! health listeners).
//!
//! Labels are low-cardinality on purpose (outcome, method): per-project and
//! per-tool figures live in the usage API, not in a time-series database.

use std::sync::OnceLock;
use std::time::Duration;

use axum::{Router, http::header, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Ingress: MCP requests by JSON-RPC method and HTTP status.
pub const MCP_REQUESTS: &str = "tengine_ingress_mcp_requests_total";
/// Ingress: `tools/call` answers by run status (succeeded, failed, rejected, …).
pub const CALLS: &str = "tengine_ingress_calls_total";
/// Ingress: `tools/call` from request to answer.
pub const CALL_SECONDS: &str = "tengine_ingress_call_duration_seconds";
/// Ingress: calls waiting for their run's outcome right now.
pub const CALLS_IN_FLIGHT: &str = "tengine_ingress_calls_in_flight";
/// Worker: upstream attempts by outcome (`ok`, `http_error`, `transport`, …).
pub const ATTEMPTS: &str = "tengine_worker_attempts_total";
/// Worker: one upstream HTTP attempt.
pub const UPSTREAM_SECONDS: &str = "tengine_worker_upstream_duration_seconds";
/// Worker: the stages of a run (`lookup`, `store_outcome`, `attempt_events`, `ack`).
pub const WORKER_STAGE_SECONDS: &str = "tengine_worker_stage_duration_seconds";
/// Ingress: the stages of a call (`auth`, `tool`, `claim`, `quota`, `enqueue`, `wait`).
pub const INGRESS_STAGE_SECONDS: &str = "tengine_ingress_stage_duration_seconds";
/// Worker: commands delivered more than once (a worker died or overran `ack_wait`).
pub const REDELIVERIES: &str = "tengine_worker_redeliveries_total";
/// Worker: runs being executed right now.
pub const RUNS_IN_FLIGHT: &str = "tengine_worker_runs_in_flight";
/// Commands stored and not yet delivered to any worker (queue depth).
pub const QUEUE_PENDING: &str = "tengine_commands_pending";
/// Commands delivered and not yet acknowledged.
pub const QUEUE_ACK_PENDING: &str = "tengine_commands_ack_pending";
/// Projector: event-log tail minus the applied checkpoint.
pub const PROJECTOR_LAG: &str = "tengine_projector_lag_events";
/// Projector: events applied to run history and usage.
pub const PROJECTOR_EVENTS: &str = "tengine_projector_events_total";
/// Projector: one batch's database transaction.
pub const PROJECTOR_BATCH_SECONDS: &str = "tengine_projector_batch_duration_seconds";
/// Projector: dead letters (events it could not apply) not re-applied yet.
pub const PROJECTOR_DEAD_LETTERS: &str = "tengine_projector_dead_letters";

/// Ingress: per-session states (ended sessions, log levels) held in memory.
pub const SESSION_STATES: &str = "tengine_ingress_session_states";
/// Ingress: session states dropped before their session expired (the cap was reached).
pub const SESSION_STATES_EVICTED: &str = "tengine_ingress_session_states_evicted_total";
/// Ingress: requests refused by a per-key limit (`limit`: session_writes, streams).
pub const KEY_LIMITED: &str = "tengine_ingress_key_limited_total";

/// Latency buckets (seconds) for every `*_seconds` histogram: 0.5 ms … 60 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once (several services may share a process:
/// `tengine dev`, tests) and returns its handle.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            // Histograms keep their samples until drained; without upkeep they grow.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .ok()?;
            Some(handle)
        })
        .clone()
}

/// Records how long a stage took since `since`.
pub fn stage(metric: &'static str, stage: &'static str, since: std::time::Instant) {
    metrics::histogram!(metric, "stage" => stage).record(since.elapsed().as_secs_f64());
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(MCP_REQUESTS, "MCP requests by JSON-RPC method and HTTP status");
    describe_gauge!(
        SESSION_STATES,
        "Per-session states (ended sessions, log levels) held in memory"
    );
    describe_counter!(
        SESSION_STATES_EVICTED,
        "Session states dropped before their session expired because the cap was reached"
    );
    describe_counter!(KEY_LIMITED, "Requests refused by a per-key limit, by limit");
    describe_counter!(CALLS, "tools/call answers by run status");
    describe_histogram!(
        CALL_SECONDS,
        metrics::Unit::Seconds,
        "tools/call from request to answer"
    );
    describe_gauge!(CALLS_IN_FLIGHT, "tools/call requests waiting for their outcome");
    describe_counter!(ATTEMPTS, "upstream attempts by outcome");
    describe_histogram!(UPSTREAM_SECONDS, metrics::Unit::Seconds, "one upstream HTTP attempt");
    describe_histogram!(
        WORKER_STAGE_SECONDS,
        metrics::Unit::Seconds,
        "stages of a run in the worker"
    );
    describe_histogram!(
        INGRESS_STAGE_SECONDS,
        metrics::Unit::Seconds,
        "stages of a tools/call in the ingress"
    );
    describe_counter!(REDELIVERIES, "commands delivered more than once");
    describe_gauge!(RUNS_IN_FLIGHT, "runs being executed by this worker");
    describe_gauge!(QUEUE_PENDING, "commands stored and not yet delivered");
    describe_gauge!(QUEUE_ACK_PENDING, "commands delivered and not yet acknowledged");
    describe_gauge!(PROJECTOR_LAG, "event-log tail minus the projector's checkpoint");
    describe_counter!(PROJECTOR_EVENTS, "events applied by the projector");
    describe_gauge!(
        PROJECTOR_DEAD_LETTERS,
        "events the projector could not apply, not re-applied yet"
    );
    describe_histogram!(
        PROJECTOR_BATCH_SECONDS,
        metrics::Unit::Seconds,
        "one projector batch transaction"
    );
}

/// `GET /metrics` in the Prometheus text format.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let handle = install();
    Router::new().route(
        "/metrics",
        get(move || {
            let body = handle.as_ref().map(PrometheusHandle::render).unwrap_or_default();
            async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response() }
        }),
    )
}
