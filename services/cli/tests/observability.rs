//! Observability of real `tengine` processes: every service (ingress, worker,
//! projector) serves Prometheus `/metrics` that parse, and with an OTLP endpoint
//! configured the spans of a call reach the collector under the trace id the MCP
//! client sent, which is also the one the upstream API sees.

use std::{
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, routing::post};
use serde_json::json;
use tengine_tests::{ADMIN_TOKEN, AdminClient, Isolation, ToolSpec, free_port, mcp::RawSession, upstream::Upstream};

struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A minimal OTLP/HTTP collector: keeps the bodies POSTed to /v1/traces.
async fn spawn_collector() -> (String, Arc<Mutex<Vec<Bytes>>>) {
    let received: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let store = received.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let store = store.clone();
            async move {
                store.lock().expect("collector lock").push(body);
                // An empty ExportTraceServiceResponse.
                ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind collector");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, received)
}

async fn wait_until<F: Fn() -> bool>(what: &str, within: Duration, check: F) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get_ok(http: &reqwest::Client, url: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(response) = http.get(url).send().await
            && response.status().is_success()
        {
            return response.text().await.expect("body");
        }
        assert!(Instant::now() < deadline, "{url} did not answer within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn parse_metrics(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text parses")
}

fn has_sample(scrape: &prometheus_parse::Scrape, name: &str) -> bool {
    scrape.samples.iter().any(|s| s.metric == name)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_service_exports_metrics_and_traces() {
    let isolation = Isolation::new().await;
    let upstream = Upstream::spawn(None).await;
    let (collector, received) = spawn_collector().await;
    let (ingress_port, worker_port, projector_port) = (free_port(), free_port(), free_port());
    let ingress_metrics_port = free_port();
    let key = |b: u8| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([b; 32])
    };
    let env: Vec<(&str, String)> = vec![
        ("TENGINE_DATABASE_URL", isolation.db_url.clone()),
        ("TENGINE_NATS_URL", tengine_tests::nats_url()),
        ("TENGINE_NATS_PREFIX", isolation.prefix.clone()),
        ("TENGINE_ADMIN_TOKEN", ADMIN_TOKEN.into()),
        ("TENGINE_MASTER_KEY", key(3)),
        ("TENGINE_SESSION_SECRET", key(4)),
        ("TENGINE_ALLOW_INSECURE_UPSTREAMS", "true".into()),
        ("TENGINE_ALLOW_PRIVATE_UPSTREAMS", "true".into()),
        ("TENGINE_OTLP_ENDPOINT", collector.clone()),
        ("TENGINE_INGRESS__LISTEN", format!("127.0.0.1:{ingress_port}")),
        (
            "TENGINE_INGRESS__PUBLIC_URL",
            format!("http://127.0.0.1:{ingress_port}"),
        ),
        (
            "TENGINE_INGRESS__METRICS_LISTEN",
            format!("127.0.0.1:{ingress_metrics_port}"),
        ),
        ("TENGINE_WORKER__HEALTH_LISTEN", format!("127.0.0.1:{worker_port}")),
        (
            "TENGINE_PROJECTOR__HEALTH_LISTEN",
            format!("127.0.0.1:{projector_port}"),
        ),
        // Export batches quickly so the test need not wait the default 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
        ("RUST_LOG", "warn".into()),
    ];
    let start = |role: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tengine"));
        for (k, _) in std::env::vars() {
            if k.starts_with("TENGINE_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg(role)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tengine")
    };
    // The ingress first: it creates the streams the others attach to.
    let mut processes = Processes(vec![start("ingress")]);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let base = format!("http://127.0.0.1:{ingress_port}");
    get_ok(&http, &format!("{base}/v1/health"), Duration::from_secs(60)).await;
    processes.0.push(start("worker"));
    processes.0.push(start("projector"));

    let admin = AdminClient::new(http.clone(), base.clone(), ADMIN_TOKEN);
    let project = admin.create_project("observed").await;
    let api_key = admin.create_api_key(project, &[]).await.key;
    admin
        .create_tool(project, ToolSpec::post("echo", &upstream.url(), "/echo"))
        .await;

    let mut session = RawSession::new(http.clone(), format!("{base}/mcp"), api_key.clone());
    session.initialize().await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("00-{trace_id}-b7ad6b7169203331-01");
    let auth = format!("Bearer {api_key}");
    let sid = session.session_id.clone().expect("session id");
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {}}});
    // The worker may still be attaching to the queue: the call waits for it.
    let reply = session
        .post_raw(
            &[
                ("authorization", auth.as_str()),
                ("accept", "application/json, text/event-stream"),
                ("content-type", "application/json"),
                ("mcp-protocol-version", "2025-11-25"),
                ("mcp-session-id", sid.as_str()),
                ("traceparent", traceparent.as_str()),
            ],
            serde_json::to_vec(&body).expect("json"),
        )
        .await;
    assert_eq!(reply.body["result"]["isError"], false, "{}", reply.body);
    let seen = upstream.requests().last().cloned().expect("the upstream was called");
    assert!(
        seen.header("traceparent").is_some_and(|t| t.contains(trace_id)),
        "the upstream sees the caller's trace: {:?}",
        seen.header("traceparent")
    );

    // Spans of the ingress and the worker reach the collector under that trace id
    // (OTLP protobuf carries it as 16 raw bytes).
    let needle: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    let service_spans = |service: &str| {
        received.lock().expect("collector lock").iter().any(|body| {
            body.windows(needle.len()).any(|w| w == needle.as_slice())
                && body.windows(service.len()).any(|w| w == service.as_bytes())
        })
    };
    wait_until("ingress spans exported", Duration::from_secs(20), || {
        service_spans("tengine-ingress")
    })
    .await;
    wait_until("worker spans exported", Duration::from_secs(20), || {
        service_spans("tengine-worker")
    })
    .await;

    // Each service's own /metrics.
    // The ingress's on its operator listener, apart from the MCP one.
    let ingress_url = format!("http://127.0.0.1:{ingress_metrics_port}/metrics");
    let ingress = parse_metrics(&get_ok(&http, &ingress_url, Duration::from_secs(10)).await);
    let on_mcp_listener = http.get(format!("{base}/metrics")).send().await.expect("GET");
    assert_eq!(
        on_mcp_listener.status(),
        404,
        "/metrics is not served where clients connect"
    );
    assert!(has_sample(&ingress, "tengine_ingress_calls_total"), "ingress metrics");
    assert!(has_sample(&ingress, "tengine_ingress_call_duration_seconds"));
    let worker_url = format!("http://127.0.0.1:{worker_port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Queue depth is sampled every 5 s.
        let worker = parse_metrics(&get_ok(&http, &worker_url, Duration::from_secs(10)).await);
        if has_sample(&worker, "tengine_worker_attempts_total") && has_sample(&worker, "tengine_commands_pending") {
            break;
        }
        assert!(Instant::now() < deadline, "worker metrics: attempts and queue depth");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let projector_url = format!("http://127.0.0.1:{projector_port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let projector = parse_metrics(&get_ok(&http, &projector_url, Duration::from_secs(10)).await);
        if has_sample(&projector, "tengine_projector_events_total")
            && has_sample(&projector, "tengine_projector_lag_events")
        {
            assert!(
                !has_sample(&projector, "tengine_worker_attempts_total"),
                "per-process metrics"
            );
            break;
        }
        assert!(Instant::now() < deadline, "projector metrics: events and lag");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(processes);
}
