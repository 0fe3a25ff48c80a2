//! Observability: the caller's W3C trace reaches the upstream API through NATS,
//! and `/metrics` scrapes and parses as Prometheus text.

use serde_json::{Value, json};
use tengine_tests::{TestApp, ToolSpec, mcp::RawSession, spawn_app, upstream::Upstream};

/// `00-<trace id>-<parent span id>-<flags>` split into its parts.
fn traceparent_parts(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value}");
    assert_eq!(parts[0], "00", "version of {value}");
    assert!(
        parts[1].len() == 32 && parts[2].len() == 16 && parts[1].chars().all(|c| c.is_ascii_hexdigit()),
        "traceparent {value}"
    );
    (parts[1].to_string(), parts[2].to_string(), parts[3].to_string())
}

async fn call_with(session: &RawSession, app: &TestApp, id: i64, extra: &[(&str, &str)]) -> Value {
    let auth = format!("Bearer {}", app.api_key);
    let sid = session.session_id.clone().expect("session");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("accept", "application/json, text/event-stream"),
        ("content-type", "application/json"),
        ("mcp-protocol-version", "2025-11-25"),
        ("mcp-session-id", sid.as_str()),
    ];
    headers.extend_from_slice(extra);
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "echo", "arguments": {}}});
    let reply = session
        .post_raw(&headers, serde_json::to_vec(&body).expect("json"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["result"]["isError"], false, "{}", reply.body);
    reply.body
}

/// An app with an `echo` tool on a recording upstream, and an initialized session.
async fn echo_app() -> (TestApp, Upstream, RawSession) {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(ToolSpec::post("echo", &upstream.url(), "/echo")).await;
    let mut session = app.session();
    session.initialize().await;
    (app, upstream, session)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_callers_trace_reaches_the_upstream() {
    let (app, upstream, session) = echo_app().await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    call_with(
        &session,
        &app,
        10,
        &[("traceparent", traceparent.as_str()), ("tracestate", "vendor=1")],
    )
    .await;
    let seen = upstream.requests().last().cloned().expect("the upstream was called");
    let (seen_trace, seen_parent, flags) = traceparent_parts(seen.header("traceparent").expect("traceparent upstream"));
    assert_eq!(
        seen_trace, trace_id,
        "the upstream request is part of the caller's trace"
    );
    assert_ne!(
        seen_parent, client_span,
        "the upstream's parent is Tengine's attempt span"
    );
    assert_eq!(flags, "01", "the sampled flag is kept");
    assert_eq!(
        seen.header("tracestate"),
        Some("vendor=1"),
        "tracestate travels with it"
    );

    // Without a traceparent every call still starts a trace of its own.
    call_with(&session, &app, 11, &[]).await;
    call_with(&session, &app, 12, &[]).await;
    let requests = upstream.requests();
    let fresh: Vec<String> = requests[requests.len() - 2..]
        .iter()
        .map(|r| traceparent_parts(r.header("traceparent").expect("traceparent")).0)
        .collect();
    assert_ne!(fresh[0], fresh[1], "two calls, two traces");
    assert!(!fresh.contains(&trace_id.to_string()));
}

/// Sums the samples of `name` whose labels include `label` (name, value).
fn sample_sum(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

async fn scrape(app: &TestApp) -> prometheus_parse::Scrape {
    let response = app
        .http
        .get(format!("{}/metrics", app.metrics_url))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/plain")),
        "Prometheus text format"
    );
    let text = response.text().await.expect("body");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("the scrape parses as Prometheus text")
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_scrape_and_parse() {
    let (app, _upstream, session) = echo_app().await; // the upstream serves until the test ends
    // The recorder is per process and tests share it: compare before and after.
    let before = scrape(&app).await;
    let run = tengine_tests::mcp::run_id(&call_with(&session, &app, 5, &[]).await["result"]);
    app.admin.finished_run(&run).await;
    let after = scrape(&app).await;

    let grew = |name: &str, label: Option<(&str, &str)>| {
        let (b, a) = (sample_sum(&before, name, label), sample_sum(&after, name, label));
        assert!(a >= b + 1.0, "{name} {label:?} grew by at least one: {b} -> {a}");
    };
    grew("tengine_ingress_calls_total", Some(("status", "succeeded")));
    grew("tengine_ingress_mcp_requests_total", Some(("method", "tools/call")));
    grew("tengine_worker_attempts_total", Some(("outcome", "ok")));
    grew("tengine_ingress_call_duration_seconds", None);
    grew("tengine_worker_upstream_duration_seconds", None);
    grew("tengine_projector_events_total", None);
    for name in [
        "tengine_projector_lag_events",
        "tengine_projector_dead_letters",
        "tengine_ingress_calls_in_flight",
    ] {
        assert!(after.samples.iter().any(|s| s.metric == name), "{name} is exported");
    }
    assert!(
        after.docs.contains_key("tengine_worker_attempts_total") || after.docs.contains_key("tengine_worker_attempts"),
        "metrics carry HELP text: {:?}",
        after.docs.keys().collect::<Vec<_>>()
    );
}

/// Operator endpoints stay apart from where clients connect: `/metrics` only on
/// the operator listener, `/v1/health` details only for the admin token.
#[tokio::test(flavor = "multi_thread")]
async fn operator_endpoints_are_apart_from_clients() {
    let app = tengine_tests::spawn_app().await;
    let on_mcp = app
        .http
        .get(format!("{}/metrics", app.base_url))
        .send()
        .await
        .expect("GET");
    assert_eq!(on_mcp.status(), 404, "no /metrics where clients connect");
    let operator = app
        .http
        .get(format!("{}/metrics", app.metrics_url))
        .send()
        .await
        .expect("GET");
    assert_eq!(operator.status(), 200);
    let health = app
        .http
        .get(format!("{}/health", app.metrics_url))
        .send()
        .await
        .expect("GET");
    assert_eq!(health.status(), 200);

    let anonymous: serde_json::Value = app
        .http
        .get(format!("{}/v1/health", app.base_url))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(anonymous, serde_json::json!({"status": "ok", "service": "ingress"}));
    let (status, detailed) = app.admin.get("/v1/health").await;
    assert_eq!(status, 200);
    for field in ["database", "nats", "projector_lag_events", "dead_letters", "version"] {
        assert!(detailed.get(field).is_some(), "{field} in {detailed}");
    }
}

/// A stopped projector shows in the ingress's health: calls still run, but run
/// history stops, so once events have waited past the bound the details say
/// `stalled` and the status is degraded (503).
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_projector_degrades_the_health() {
    let (app, _upstream, session) = echo_app().await;
    call_with(&session, &app, 1, &[]).await;
    let (status, detailed) = app.admin.get("/v1/health").await;
    assert_eq!(
        (status, &detailed["projector"]),
        (200, &json!("applying")),
        "{detailed}"
    );

    app.kill_projector();
    // Events now wait for a projector that is gone.
    call_with(&session, &app, 2, &[]).await;
    let killed = std::time::Instant::now();
    let deadline = killed + std::time::Duration::from_secs(60);
    loop {
        let (status, detailed) = app.admin.get("/v1/health").await;
        if detailed["projector"] == "stalled" {
            assert_eq!((status, &detailed["status"]), (503, &json!("degraded")), "{detailed}");
            assert!(
                killed.elapsed() >= std::time::Duration::from_secs(25),
                "not before the bound"
            );
            break;
        }
        assert_eq!(status, 200, "{detailed}");
        assert!(std::time::Instant::now() < deadline, "still {detailed}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
