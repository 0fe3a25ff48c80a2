//! The probe contract between the Helm chart and the binary: each service is started
//! as its Deployment starts it (the chart's args, and only the chart's ConfigMap as
//! environment, secrets as files through `TENGINE_<KEY>_FILE`), against the local
//! NATS and PostgreSQL, and every probe the chart declares must answer on the path
//! and port it names: live 200 at once, ready 503 before `tengine migrate` (the
//! chart's hook Job, run with the Job's own args and env) and 200 after, ready 503
//! while PostgreSQL is unreachable and 200 once it is back.
//!
//! The chart is rendered by `deploy/check`, which writes the contract this test
//! reads (`.tengine/deploy/probe-contract.json`, or `TENGINE_PROBE_CONTRACT`).
//!
//! What differs from a cluster, and why: listeners bind loopback on free ports (the
//! three pods all use one admin port; here they share a host), NATS is the local
//! single server (one stream replica, small streams, a prefix of the test's own),
//! and the secrets are the test's.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;
use tengine_tests::{Isolation, free_port, nats_url};
use tokio::{net::TcpListener, task::JoinSet};

#[derive(Deserialize)]
struct Contract {
    env: BTreeMap<String, String>,
    secret_dir: String,
    services: BTreeMap<String, ServiceContract>,
}

#[derive(Deserialize)]
struct ServiceContract {
    args: Vec<String>,
    #[serde(default)]
    ports: BTreeMap<String, u16>,
    #[serde(default)]
    probes: BTreeMap<String, Probe>,
    /// The container's own env (the migration Job's; the Deployments use the ConfigMap).
    #[serde(default)]
    env: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Probe {
    path: String,
    port: u16,
}

const SERVICES: [&str; 3] = ["ingress", "worker", "projector"];

fn contract() -> Contract {
    let path = std::env::var_os("TENGINE_PROBE_CONTRACT").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tengine/deploy/probe-contract.json"),
        PathBuf::from,
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run deploy/check first (it renders the Helm chart and writes the probe contract)",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("the probe contract is JSON")
}

/// A process killed when dropped, with its stderr in a file for failure messages.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One installation's worth of the chart's environment, on this host.
struct Install {
    contract: Contract,
    dir: PathBuf,
    /// The ConfigMap with the secret files and test-only settings rewritten.
    env: BTreeMap<String, String>,
}

impl Install {
    fn new(isolation: &Isolation, database_url: &str) -> Self {
        let contract = contract();
        let dir = std::env::temp_dir().join(format!("tengine-probes-{}", isolation.prefix));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let key = || base64::engine::general_purpose::STANDARD.encode(rand_bytes());
        // The Secret's keys (deploy/helm/tengine/templates/secret.yaml), as files.
        for (name, value) in [
            ("database-url", database_url.to_owned()),
            ("admin-token", "probe-admin-token".to_owned()),
            ("master-key", key()),
            ("session-secret", key()),
        ] {
            std::fs::write(dir.join(name), format!("{value}\n")).expect("write a secret");
        }
        let mut env = contract.env.clone();
        let mut install = Self {
            contract,
            dir,
            env: BTreeMap::new(),
        };
        for value in env.values_mut() {
            *value = install.secret_path(value);
        }
        for (key, value) in [
            ("TENGINE_NATS_URL", nats_url()),
            ("TENGINE_NATS_PREFIX", isolation.prefix.clone()),
            ("TENGINE_STREAMS__REPLICAS", "1".into()),
            // JetStream reserves max_bytes up front; the shared test server needs small streams.
            ("TENGINE_STREAMS__EVENTS_MAX_BYTES", (16 << 20).to_string()),
            ("TENGINE_STREAMS__COMMANDS_MAX_BYTES", (8 << 20).to_string()),
            ("TENGINE_STREAMS__SESSIONS_MAX_BYTES", (4 << 20).to_string()),
            ("TENGINE_STREAMS__IDEMPOTENCY_MAX_BYTES", (4 << 20).to_string()),
            ("TENGINE_STREAMS__CANCELLED_MAX_BYTES", (4 << 20).to_string()),
            ("TENGINE_STREAMS__APPROVALS_MAX_BYTES", (4 << 20).to_string()),
            ("TENGINE_STREAMS__TASKS_MAX_BYTES", (4 << 20).to_string()),
        ] {
            env.insert(key.into(), value);
        }
        install.env = env;
        install
    }

    /// A path under the chart's secret mount, moved to this test's directory.
    fn secret_path(&self, value: &str) -> String {
        match value.strip_prefix(&format!("{}/", self.contract.secret_dir)) {
            Some(name) => self.dir.join(name).display().to_string(),
            None => value.to_owned(),
        }
    }

    fn spawn(&self, args: &[String], env: &BTreeMap<String, String>, name: &str) -> Process {
        let log = self.dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_tengine"))
            .args(args)
            // Only what the pod would get: not the test runner's TENGINE_* variables.
            .env_clear()
            .envs(env)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start tengine");
        Process { child, log }
    }

    /// Starts `service` as its Deployment does; returns it with each probe's URL and
    /// the ingress's client port. Each listener the chart names moves to a free
    /// loopback port, and each probe must name the port of one of them.
    fn start(&self, service: &str) -> Running {
        let spec = &self.contract.services[service];
        let own = format!("TENGINE_{}__", service.to_uppercase());
        let mut env = self.env.clone();
        let mut moved: BTreeMap<u16, u16> = BTreeMap::new();
        for (key, value) in env.iter_mut() {
            if key.starts_with(&own) && key.ends_with("LISTEN") {
                let port: u16 = value
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("{key}={value} is not host:port"));
                let local = free_port();
                moved.insert(port, local);
                *value = format!("127.0.0.1:{local}");
            }
        }
        let probe = |kind: &str| {
            let probe = spec
                .probes
                .get(kind)
                .unwrap_or_else(|| panic!("{service} has no {kind}"));
            let port = moved.get(&probe.port).unwrap_or_else(|| {
                panic!(
                    "{service}'s {kind} names port {}, which none of its listeners ({own}*LISTEN) uses",
                    probe.port
                )
            });
            format!("http://127.0.0.1:{port}{}", probe.path)
        };
        let live = probe("livenessProbe");
        let ready = probe("readinessProbe");
        let http = spec.ports.get("http").map(|p| {
            let port = moved
                .get(p)
                .unwrap_or_else(|| panic!("{service}'s http port {p} is no listener"));
            format!("http://127.0.0.1:{port}")
        });
        Running {
            name: service.to_owned(),
            process: self.spawn(&spec.args, &env, service),
            live,
            ready,
            http,
        }
    }

    /// `tengine migrate` as the hook Job runs it: its args and only its env.
    fn migrate(&self) {
        let job = self
            .contract
            .services
            .get("migrate")
            .expect("the default values render a migration Job");
        let env = job.env.iter().map(|(k, v)| (k.clone(), self.secret_path(v))).collect();
        let mut process = self.spawn(&job.args, &env, "migrate");
        let status = process.child.wait().expect("migrate runs");
        assert!(status.success(), "tengine migrate failed: {}", process.log());
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Running {
    name: String,
    process: Process,
    live: String,
    ready: String,
    http: Option<String>,
}

impl Running {
    /// Polls `url` until it answers `want`, for up to `within`; returns the last body.
    async fn wait_status(&self, url: &str, want: u16, within: Duration) -> Value {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let deadline = Instant::now() + within;
        loop {
            let last = match http.get(url).send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body = response.text().await.unwrap_or_default();
                    if status == want {
                        return serde_json::from_str(&body).unwrap_or(Value::String(body));
                    }
                    format!("{status} {body}")
                }
                Err(err) => err.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "{}: {url} did not answer {want} within {within:?} (last: {last}); its log:\n{}",
                self.name,
                self.process.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn rand_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes
}

/// `tengine healthcheck URL`'s exit code.
fn healthcheck(url: &str) -> i32 {
    Command::new(env!("CARGO_BIN_EXE_tengine"))
        .args(["healthcheck", url, "--timeout-ms", "2000"])
        .env_clear()
        .stderr(Stdio::null())
        .status()
        .expect("tengine healthcheck runs")
        .code()
        .unwrap_or(-1)
}

#[tokio::test]
async fn chart_probes_answer_before_and_after_the_migration_hook() {
    let isolation = Isolation::new().await;
    let install = Install::new(&isolation, &isolation.db_url);
    let running: Vec<Running> = SERVICES.iter().map(|s| install.start(s)).collect();

    // Before the hook Job: alive, not ready, and saying why.
    for service in &running {
        service.wait_status(&service.live, 200, Duration::from_secs(30)).await;
        let body = service.wait_status(&service.ready, 503, Duration::from_secs(10)).await;
        assert_eq!(body["checks"]["schema"], false, "{}: {body}", service.name);
        assert_eq!(body["checks"]["database"], true, "{}: {body}", service.name);
        assert_eq!(healthcheck(&service.ready), 1, "{}: healthcheck of a 503", service.name);
        assert_eq!(healthcheck(&service.live), 0, "{}: healthcheck of live", service.name);
    }

    install.migrate();

    for service in &running {
        let body = service.wait_status(&service.ready, 200, Duration::from_secs(60)).await;
        for check in ["nats", "streams", "database", "schema"] {
            assert_eq!(body["checks"][check], true, "{}: {body}", service.name);
        }
        assert_eq!(healthcheck(&service.ready), 0, "{}: healthcheck of ready", service.name);
        // The chart's ServiceMonitor scrapes /metrics on the same port.
        let metrics = service.ready.replace("/healthz/ready", "/metrics");
        service.wait_status(&metrics, 200, Duration::from_secs(5)).await;
        // The path earlier versions documented still answers.
        let legacy = service.ready.replace("/healthz/ready", "/health");
        service.wait_status(&legacy, 200, Duration::from_secs(5)).await;
    }
    let ingress = &running[0];
    let http = ingress.http.as_deref().expect("the ingress has an http port");
    ingress
        .wait_status(&format!("{http}/v1/health"), 200, Duration::from_secs(5))
        .await;
    let unserved = ingress.live.replace("/healthz/live", "/healthz/nothing");
    assert_eq!(healthcheck(&unserved), 1, "healthcheck of a 404");
    assert_eq!(
        healthcheck(&format!("http://127.0.0.1:{}/healthz/live", free_port())),
        1,
        "healthcheck of a closed port"
    );
}

/// A loopback TCP relay to PostgreSQL that the test can cut and restore: the
/// database becomes unreachable for the service without touching the shared server.
struct Relay {
    listen: std::net::SocketAddr,
    target: String,
    tasks: JoinSet<()>,
}

impl Relay {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let listen = listener.local_addr().expect("addr");
        let mut relay = Self {
            listen,
            target,
            tasks: JoinSet::new(),
        };
        relay.serve(listener);
        relay
    }

    fn serve(&mut self, listener: TcpListener) {
        let target = self.target.clone();
        self.tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
    }

    /// Closes the listener and every relayed connection (their JoinSet is dropped).
    async fn cut(&mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    async fn restore(&mut self) {
        let listener = TcpListener::bind(self.listen).await.expect("rebind the relay's port");
        self.serve(listener);
    }
}

// Multi-threaded: the relay keeps serving while the test waits for `tengine migrate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_readiness_follows_the_database() {
    let isolation = Isolation::new().await;
    let mut url = reqwest::Url::parse(&isolation.db_url).expect("database URL");
    let target = format!(
        "{}:{}",
        url.host_str().expect("a host"),
        url.port_or_known_default().expect("a port")
    );
    let mut relay = Relay::start(target).await;
    url.set_host(Some("127.0.0.1")).expect("host");
    url.set_port(Some(relay.listen.port())).expect("port");
    let install = Install::new(&isolation, url.as_str());
    install.migrate();
    let worker = install.start("worker");
    worker.wait_status(&worker.ready, 200, Duration::from_secs(60)).await;

    relay.cut().await;
    let body = worker.wait_status(&worker.ready, 503, Duration::from_secs(15)).await;
    assert_eq!(body["checks"]["database"], false, "{body}");
    assert_eq!(body["checks"]["nats"], true, "{body}");
    worker.wait_status(&worker.live, 200, Duration::from_secs(5)).await;

    relay.restore().await;
    worker.wait_status(&worker.ready, 200, Duration::from_secs(30)).await;
}
