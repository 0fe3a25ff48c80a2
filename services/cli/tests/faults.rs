//! Execution guarantees under real faults, with real processes: two ingress
//! instances, a worker and a projector (`tengine` binaries) on a private
//! nats-server, while concurrent clients retry every failed call with its
//! idempotency key. During the run the test SIGKILLs and restarts the worker
//! (mid-call), nats-server, the projector and one ingress, and the upstream
//! answers 503 at random. A second scenario runs two workers on the shared
//! command consumer; a third runs a 3-node NATS cluster with replicated (R3)
//! streams and SIGKILLs the node leading the command stream. Afterwards: every call ended in history as succeeded,
//! no call ran twice, and no request id had its effect applied twice.
//! Bounded: loopback only, a fixed number of calls, deadlines everywhere.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Json, Router, http::HeaderMap, response::IntoResponse, routing::post};
use serde_json::{Value, json};
use tengine_tests::{ADMIN_TOKEN, AdminClient, Isolation, ToolSpec, free_port, mcp::RawSession};

fn nats_binary() -> String {
    [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .map_or_else(|| "nats-server".to_string(), str::to_string)
}

struct Cluster {
    dir: PathBuf,
    env: Vec<(String, String)>,
    /// Client port and config file of each NATS node.
    nats_nodes: Vec<(u16, PathBuf)>,
    ingress_ports: [u16; 2],
    worker_health: Vec<u16>,
    projector_health: u16,
    nats: Vec<Option<Child>>,
    ingress: [Option<Child>; 2],
    workers: Vec<Option<Child>>,
    projector: Option<Child>,
}

/// Writes the configs of `n` NATS nodes (a cluster when n > 1) under `dir`.
fn nats_configs(dir: &std::path::Path, n: usize) -> Vec<(u16, PathBuf)> {
    let client: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
    (0..n)
        .map(|i| {
            let cluster = if n > 1 {
                let list: Vec<String> = routes.iter().map(|p| format!("nats-route://127.0.0.1:{p}")).collect();
                format!(
                    "cluster {{\n  name: faults\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    routes[i],
                    list.join(", ")
                )
            } else {
                String::new()
            };
            // The monitoring port (`/jsz?streams=true&consumers=true`) is for post-mortems
            // of kept logs (TENGINE_KEEP_FAULT_LOGS); the test itself asks JetStream.
            let conf = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\" }}\n{cluster}",
                client[i],
                free_port(),
                dir.join(format!("nats{i}")).display()
            );
            let path = dir.join(format!("nats{i}.conf"));
            std::fs::write(&path, conf).expect("write nats config");
            (client[i], path)
        })
        .collect()
}

impl Cluster {
    fn log(&self, name: &str) -> Stdio {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null())
    }

    fn start_nats(&mut self, i: usize) {
        let (port, conf) = self.nats_nodes[i].clone();
        let child = Command::new(nats_binary())
            .arg("-c")
            .arg(conf)
            .stdout(self.log(&format!("nats{i}")))
            .stderr(self.log(&format!("nats{i}")))
            .spawn()
            .expect("start nats-server");
        self.nats[i] = Some(child);
        wait_port(port);
    }

    fn tengine(&self, role: &str, extra: &[(&str, String)], log: &str) -> Child {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tengine"));
        // The test's own TENGINE_* settings must not leak into the cluster.
        for (key, _) in std::env::vars() {
            if key.starts_with("TENGINE_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg(role)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "warn")
            .stdout(self.log(log))
            .stderr(self.log(log))
            .spawn()
            .expect("start tengine")
    }

    fn start_ingress(&mut self, i: usize) {
        let port = self.ingress_ports[i];
        let child = self.tengine(
            "ingress",
            &[
                ("TENGINE_INGRESS__LISTEN", format!("127.0.0.1:{port}")),
                ("TENGINE_INGRESS__PUBLIC_URL", format!("http://127.0.0.1:{port}")),
                // Two ingress processes: each its own operator port.
                ("TENGINE_INGRESS__METRICS_LISTEN", "127.0.0.1:0".into()),
            ],
            &format!("ingress{i}"),
        );
        self.ingress[i] = Some(child);
        wait_port(port);
    }

    fn start_worker(&mut self, i: usize) {
        let child = self.tengine(
            "worker",
            &[(
                "TENGINE_WORKER__HEALTH_LISTEN",
                format!("127.0.0.1:{}", self.worker_health[i]),
            )],
            &format!("worker{i}"),
        );
        self.workers[i] = Some(child);
    }

    fn start_projector(&mut self) {
        let child = self.tengine(
            "projector",
            &[(
                "TENGINE_PROJECTOR__HEALTH_LISTEN",
                format!("127.0.0.1:{}", self.projector_health),
            )],
            "projector",
        );
        self.projector = Some(child);
    }
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill(); // SIGKILL
        let _ = c.wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.workers.iter_mut().for_each(kill);
        kill(&mut self.projector);
        kill(&mut self.ingress[0]);
        kill(&mut self.ingress[1]);
        self.nats.iter_mut().for_each(kill);
        // TENGINE_KEEP_FAULT_LOGS keeps the processes' logs for a post-mortem.
        if std::env::var_os("TENGINE_KEEP_FAULT_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} did not open");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The customer's API: dedupes on the request id, as Tengine asks of receivers.
#[derive(Default)]
struct Ledger {
    deliveries: BTreeMap<String, u32>,
    served: u64,
    /// Request ids answered 503 once already.
    busy_once: std::collections::BTreeSet<String>,
}

async fn spawn_upstream(ledger: Arc<Mutex<Ledger>>) -> u16 {
    let app = Router::new().route(
        "/apply",
        post(move |headers: HeaderMap| {
            let ledger = ledger.clone();
            async move {
                let id = headers
                    .get("x-tengine-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let (served, busy) = {
                    let mut l = ledger.lock().expect("lock");
                    l.served += 1;
                    // Roughly one answer in eight is a 503 before anything is applied, at
                    // most once per run, so the worker's retry succeeds. (A run that
                    // failed for good is what every client retry with its key gets back,
                    // by design; five 503s in a row made this test fail now and then.)
                    let busy = l.served % 8 == 3 && l.busy_once.insert(id.clone());
                    (l.served, busy)
                };
                if busy {
                    return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
                }
                tokio::time::sleep(Duration::from_millis(20 + served % 5 * 30)).await;
                let first = {
                    let mut l = ledger.lock().expect("lock");
                    let n = l.deliveries.entry(id).or_insert(0);
                    *n += 1;
                    *n == 1
                };
                Json(json!({"applied": first})).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

/// A fault to inject while the clients run.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Worker,
    Nats,
    /// Cluster only: SIGKILL the node leading the command stream, restart it after
    /// a while, and wait until its replicas have caught up again.
    NatsLeader,
    Projector,
    Ingress,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Worker => "worker SIGKILL",
            Fault::Nats => "nats-server SIGKILL + restart",
            Fault::NatsLeader => "stream-leader node SIGKILL + restart",
            Fault::Projector => "projector SIGKILL",
            Fault::Ingress => "ingress SIGKILL",
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_lost_or_duplicated_while_processes_die() {
    scenario(
        1,
        1,
        1000,
        16,
        &[Fault::Worker, Fault::Nats, Fault::Projector, Fault::Ingress],
    )
    .await;
}

/// Two workers share the command consumer while each is killed in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_share_the_queue_while_dying() {
    scenario(1, 2, 400, 16, &[Fault::Worker, Fault::Nats]).await;
}

/// A 3-node cluster with replicated (R3) streams and KV buckets: while two
/// workers share the command consumer, the node leading the command stream is
/// SIGKILLed under load and restarted (twice, so far as the load lasts), and a
/// worker is killed in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nats_node_dies_under_load() {
    // The worker fault comes first and the load is long enough for two leader
    // losses (each takes 6-10 s: 3 s down, then replicas catching up).
    scenario(3, 2, 600, 12, &[Fault::Worker, Fault::NatsLeader]).await;
}

/// One scenario at a time: each runs up to eight processes with PostgreSQL pools
/// (about a hundred connections at most, PostgreSQL's default limit) on a small CI
/// machine, and the harness runs tests in parallel.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn scenario(nodes: usize, workers: usize, calls: usize, clients: usize, plan: &[Fault]) {
    let _serial = SERIAL.lock().await;
    let isolation = Isolation::new().await;
    let dir = std::env::temp_dir().join(format!("tengine-faults-{}", isolation.prefix));
    std::fs::create_dir_all(&dir).expect("dir");
    let key = |b: u8| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([b; 32])
    };
    let nats_nodes = nats_configs(&dir, nodes);
    let nats_url = nats_nodes
        .iter()
        .map(|(port, _)| format!("nats://127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut cluster = Cluster {
        env: vec![
            ("TENGINE_DATABASE_URL".into(), isolation.db_url.clone()),
            ("TENGINE_NATS_URL".into(), nats_url),
            ("TENGINE_STREAMS__REPLICAS".into(), nodes.to_string()),
            ("TENGINE_NATS_PREFIX".into(), "faults".into()),
            ("TENGINE_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
            ("TENGINE_MASTER_KEY".into(), key(7)),
            ("TENGINE_SESSION_SECRET".into(), key(9)),
            ("TENGINE_ALLOW_INSECURE_UPSTREAMS".into(), "true".into()),
            ("TENGINE_ALLOW_PRIVATE_UPSTREAMS".into(), "true".into()),
            // A killed worker's command comes back after 2 s.
            ("TENGINE_WORKER__ACK_WAIT_SECS".into(), "2".into()),
            ("TENGINE_STREAMS__EVENTS_MAX_BYTES".into(), (64u64 << 20).to_string()),
            ("TENGINE_STREAMS__COMMANDS_MAX_BYTES".into(), (32u64 << 20).to_string()),
            ("TENGINE_STREAMS__SESSIONS_MAX_BYTES".into(), (8u64 << 20).to_string()),
            (
                "TENGINE_STREAMS__IDEMPOTENCY_MAX_BYTES".into(),
                (16u64 << 20).to_string(),
            ),
            ("TENGINE_STREAMS__CANCELLED_MAX_BYTES".into(), (4u64 << 20).to_string()),
        ],
        dir,
        nats_nodes,
        ingress_ports: [free_port(), free_port()],
        worker_health: (0..workers).map(|_| free_port()).collect(),
        projector_health: free_port(),
        nats: (0..nodes).map(|_| None).collect(),
        ingress: [None, None],
        workers: (0..workers).map(|_| None).collect(),
        projector: None,
    };
    for i in 0..nodes {
        cluster.start_nats(i);
    }
    if nodes > 1 {
        wait_for_jetstream(&cluster).await;
    }
    // The first instance creates the streams; the others then find them (a 2.9
    // cluster answers racing creations of one new replicated stream slowly).
    cluster.start_ingress(0);
    wait_healthy(&format!("http://127.0.0.1:{}/v1/health", cluster.ingress_ports[0])).await;
    cluster.start_ingress(1);
    for i in 0..workers {
        cluster.start_worker(i);
    }
    cluster.start_projector();

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let upstream = spawn_upstream(ledger.clone()).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let base = |i: usize| format!("http://127.0.0.1:{}", cluster.ingress_ports[i]);
    let admin = AdminClient::new(http.clone(), base(0), ADMIN_TOKEN);
    let project = admin.create_project("faults").await;
    let api_key = admin.create_api_key(project, &[]).await.key;
    admin
        .create_tool(
            project,
            ToolSpec::post("apply", &format!("http://127.0.0.1:{upstream}"), "/apply")
                .timeout_ms(3000)
                .retry(json!({"max_attempts": 5, "initial_backoff_ms": 50, "max_backoff_ms": 500})),
        )
        .await;

    // One session id serves both instances (sessions are signed, not stored).
    let mut session = RawSession::new(http.clone(), format!("{}/mcp", base(0)), api_key.clone());
    session.initialize().await;
    let session_id = session.session_id.clone().expect("session");

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let urls = [format!("{}/mcp", base(0)), format!("{}/mcp", base(1))];
    let mut handles = Vec::new();
    let retries = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for c in 0..clients {
        let (http, urls, key, sid, retries) = (
            http.clone(),
            urls.clone(),
            api_key.clone(),
            session_id.clone(),
            retries.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut results = Vec::new();
            for i in (c..calls).step_by(clients) {
                let idem = format!("call-{i}");
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut attempt = 0usize;
                let run_id = loop {
                    let url = &urls[(i + attempt) % 2];
                    attempt += 1;
                    let body = json!({"jsonrpc": "2.0", "id": format!("{i}-{attempt}"), "method": "tools/call",
                                      "params": {"name": "apply", "arguments": {"n": i}}});
                    let auth = format!("Bearer {key}");
                    let reply = http
                        .post(url)
                        .header("authorization", &auth)
                        .header("accept", "application/json, text/event-stream")
                        .header("content-type", "application/json")
                        .header("mcp-session-id", &sid)
                        .header("idempotency-key", &idem)
                        .json(&body)
                        .send()
                        .await;
                    let last_answer = match reply {
                        Ok(reply) => {
                            let status = reply.status();
                            let text = reply.text().await.unwrap_or_default();
                            let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                            if status.is_success() && value["result"]["isError"] == false {
                                break value["result"]["_meta"]["tengine.dev/runId"]
                                    .as_str()
                                    .unwrap_or_default()
                                    .to_string();
                            }
                            format!("{status} {}", text.chars().take(300).collect::<String>())
                        }
                        Err(err) => err.to_string(),
                    };
                    assert!(
                        Instant::now() < deadline,
                        "call {i} did not succeed within 120 s of retries; last answer: {last_answer}"
                    );
                    retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                };
                results.push((i, run_id));
            }
            results
        }));
    }

    // Chaos, until the clients are done (bounded by their own deadlines).
    let mut faults: BTreeMap<&str, u32> = BTreeMap::new();
    let chaos_done = done.clone();
    let mut step = 0u32;
    while !handles.iter().all(|c| c.is_finished()) && step < 120 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let fault = plan[step as usize % plan.len()];
        match fault {
            Fault::Worker => {
                let i = step as usize % workers;
                kill(&mut cluster.workers[i]);
                tokio::time::sleep(Duration::from_millis(300)).await;
                cluster.start_worker(i);
            }
            Fault::Nats => {
                let i = step as usize % nodes;
                kill(&mut cluster.nats[i]);
                tokio::time::sleep(Duration::from_millis(500)).await;
                cluster.start_nats(i);
            }
            // Two leader losses are the point; more would only stretch the test.
            Fault::NatsLeader if faults.get(fault.name()).is_some_and(|n| *n >= 2) => {
                step += 1;
                continue;
            }
            Fault::NatsLeader => {
                let i = stream_leader(&cluster, "FAULTS_COMMANDS")
                    .await
                    .unwrap_or(step as usize % nodes);
                let down = Instant::now();
                kill(&mut cluster.nats[i]);
                // Long enough for the other two to elect new leaders and carry load.
                tokio::time::sleep(Duration::from_secs(3)).await;
                cluster.start_nats(i);
                let caught_up = wait_replicas_current(&cluster).await;
                println!(
                    "killed node n{i} (leader of FAULTS_COMMANDS); back and current after {caught_up:?} ({:?} since the kill)",
                    down.elapsed()
                );
            }
            Fault::Projector => {
                kill(&mut cluster.projector);
                tokio::time::sleep(Duration::from_millis(300)).await;
                cluster.start_projector();
            }
            Fault::Ingress => {
                kill(&mut cluster.ingress[1]);
                tokio::time::sleep(Duration::from_millis(500)).await;
                cluster.start_ingress(1);
            }
        }
        *faults.entry(fault.name()).or_default() += 1;
        step += 1;
    }
    chaos_done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut finished = Vec::new();
    for handle in handles {
        finished.extend(handle.await.expect("client task"));
    }
    let elapsed = started.elapsed();
    assert_eq!(finished.len(), calls);

    // Every call's run reaches history as succeeded (the projector catches up).
    let pool = sqlx::PgPool::connect(&isolation.db_url).await.expect("pool");
    let deadline = Instant::now() + Duration::from_secs(90);
    let (runs, succeeded) = loop {
        let (runs, succeeded): (i64, i64) =
            // A call refused before it was queued (`rejected`) is not an accepted run.
            sqlx::query_as(
                "SELECT count(*) FILTER (WHERE status <> 'rejected'), count(*) FILTER (WHERE status = 'succeeded') FROM runs",
            )
                .fetch_one(&pool)
                .await
                .expect("count");
        if succeeded as usize >= calls || Instant::now() > deadline {
            break (runs, succeeded);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Usage is counted once per terminal run, in the projector's transaction.
    let (usage_calls, all_runs) = loop {
        let (usage,): (Option<i64>,) = sqlx::query_as("SELECT sum(calls)::bigint FROM usage_hourly")
            .fetch_one(&pool)
            .await
            .expect("usage");
        let usage = usage.unwrap_or(0);
        let (all_runs,): (i64,) = sqlx::query_as("SELECT count(*) FROM runs")
            .fetch_one(&pool)
            .await
            .expect("runs");
        if usage >= all_runs || Instant::now() > deadline {
            break (usage, all_runs);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let distinct_runs: std::collections::BTreeSet<_> = finished.iter().map(|(_, r)| r.clone()).collect();
    let (applied, duplicate_deliveries, served) = {
        let l = ledger.lock().expect("lock");
        (
            l.deliveries.len(),
            l.deliveries.values().map(|n| u64::from(n - 1)).sum::<u64>(),
            l.served,
        )
    };
    println!(
        "faults ({nodes} NATS node(s), {workers} worker(s)): {calls} calls by {clients} retrying clients in {elapsed:?}; \
         faults injected: {faults:?}; \
         client retries: {}; runs in history: {runs} ({succeeded} succeeded); usage calls: {usage_calls} of {all_runs} runs; distinct runs: {}; \
         request ids applied: {applied}; duplicate deliveries deduped by the API: {duplicate_deliveries}; \
         upstream requests served: {served}",
        retries.load(std::sync::atomic::Ordering::Relaxed),
        distinct_runs.len(),
    );
    assert_eq!(
        faults.len(),
        plan.len(),
        "every planned kind of fault was injected: {faults:?}"
    );
    assert_eq!(distinct_runs.len(), calls, "each call is one run");
    assert_eq!(
        runs as usize, calls,
        "no call ran twice and none is missing from history"
    );
    assert_eq!(
        succeeded as usize, calls,
        "every accepted run is terminal and succeeded"
    );
    assert_eq!(applied, calls, "every call's effect was applied exactly once");
    assert_eq!(
        usage_calls, all_runs,
        "usage counts equal run counts (refused calls included)"
    );
    drop(cluster);
}

/// The live nodes' client URLs.
fn live_urls(cluster: &Cluster) -> Vec<String> {
    cluster
        .nats_nodes
        .iter()
        .zip(&cluster.nats)
        .filter(|(_, child)| child.is_some())
        .map(|((port, _), _)| format!("nats://127.0.0.1:{port}"))
        .collect()
}

/// Stream infos of the replicated streams, asked of a live node (bounded).
async fn stream_infos(cluster: &Cluster, names: &[&str]) -> Option<Vec<async_nats::jetstream::stream::Info>> {
    let urls = live_urls(cluster);
    tokio::time::timeout(Duration::from_secs(3), async {
        let client = async_nats::connect(urls.as_slice()).await.ok()?;
        let js = async_nats::jetstream::new(client);
        let mut infos = Vec::new();
        for name in names {
            let mut stream = js.get_stream(*name).await.ok()?;
            infos.push(stream.info().await.ok()?.clone());
        }
        Some(infos)
    })
    .await
    .ok()
    .flatten()
}

/// The index of the node leading `stream` (server names are `n{index}`).
async fn stream_leader(cluster: &Cluster, stream: &str) -> Option<usize> {
    let info = stream_infos(cluster, &[stream]).await?.pop()?;
    info.cluster?.leader?.strip_prefix('n')?.parse().ok()
}

/// Waits (at most 30 s) until every replicated stream has a leader and all its
/// replicas are current; returns how long that took.
async fn wait_replicas_current(cluster: &Cluster) -> Duration {
    let started = Instant::now();
    let names = [
        "FAULTS_COMMANDS",
        "FAULTS_EVENTS",
        "KV_FAULTS_IDEMPOTENCY",
        "KV_FAULTS_CANCELLED",
        "KV_FAULTS_SESSIONS",
    ];
    while started.elapsed() < Duration::from_secs(30) {
        let current = stream_infos(cluster, &names).await.is_some_and(|infos| {
            infos.iter().all(|info| {
                info.cluster.as_ref().is_some_and(|c| {
                    c.leader.is_some()
                        && c.replicas.len() + 1 == cluster.nats_nodes.len()
                        && c.replicas.iter().all(|r| r.current && !r.offline)
                })
            })
        });
        if current {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    started.elapsed()
}

/// Waits until the cluster has elected a JetStream meta leader.
async fn wait_for_jetstream(cluster: &Cluster) {
    let url = format!("nats://127.0.0.1:{}", cluster.nats_nodes[0].0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Creating a replicated stream works only once the cluster has a leader.
        if let Ok(client) = async_nats::connect(&url).await {
            let js = async_nats::jetstream::new(client);
            let probe = async_nats::jetstream::stream::Config {
                name: "READY_PROBE".into(),
                subjects: vec!["ready.probe".into()],
                num_replicas: cluster.nats_nodes.len(),
                ..Default::default()
            };
            if js.create_or_update_stream(probe).await.is_ok() {
                let _ = js.delete_stream("READY_PROBE").await;
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the NATS cluster formed no JetStream within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_healthy(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    loop {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} did not become healthy within 90 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
