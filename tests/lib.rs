//! Test harness: `spawn_app()` starts a real ingress, worker and projector against
//! the real NATS and PostgreSQL, each test with a fresh database and its own
//! JetStream prefix (so tests run in parallel), and `Upstream` is a real HTTP API
//! on 127.0.0.1:0 that records what it receives and checks signatures with the
//! off-the-shelf `standardwebhooks` library.

pub mod admin;
pub mod mcp;
pub mod poison;
pub mod tool_spec;
pub mod upstream;

pub use admin::AdminClient;
pub use tool_spec::ToolSpec;

use std::{net::SocketAddr, sync::Arc};

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use tengine_core::{Config, Topology};
use tokio::{sync::watch, task::JoinHandle};
use uuid::Uuid;

pub const ADMIN_TOKEN: &str = "test-admin-token";

pub fn database_url() -> String {
    std::env::var("TENGINE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://tengine:tengine@127.0.0.1:5432/tengine".into())
}

pub fn nats_url() -> String {
    std::env::var("TENGINE_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn with_database(url: &str, name: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("TENGINE_TEST_DATABASE_URL is a URL");
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

/// A loopback port nothing listens on right now (for processes a test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Logs (RUST_LOG, default warn) and trace context, as the services install them.
pub fn init_logging() {
    tengine_core::telemetry::init_for_tests();
}

/// A database and a JetStream prefix owned by one test; dropped with it.
pub struct Isolation {
    pub db_name: String,
    pub db_url: String,
    pub prefix: String,
}

impl Isolation {
    pub async fn new() -> Self {
        let suffix = Uuid::new_v4().simple().to_string()[..12].to_string();
        let db_name = format!("tengine_it_{suffix}");
        let mut conn = PgConnection::connect(&database_url())
            .await
            .expect("connect to TENGINE_TEST_DATABASE_URL (run deploy/local/test, which starts PostgreSQL)");
        sqlx::query(&format!("CREATE DATABASE {db_name}"))
            .execute(&mut conn)
            .await
            .expect("create the test database (the role needs CREATEDB)");
        Self {
            db_url: with_database(&database_url(), &db_name),
            db_name,
            prefix: format!("it{suffix}"),
        }
    }
}

impl Drop for Isolation {
    fn drop(&mut self) {
        let db_name = self.db_name.clone();
        let prefix = self.prefix.clone();
        // Cleanup needs async I/O; do it on a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async move {
                if let Ok(client) = async_nats::connect(nats_url()).await {
                    Topology::new(prefix)
                        .delete_all(&async_nats::jetstream::new(client))
                        .await;
                }
                if let Ok(mut conn) = PgConnection::connect(&database_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

pub struct TestApp {
    pub base_url: String,
    /// The ingress's operator listener (`/metrics`, `/health`).
    pub metrics_url: String,
    pub mcp_url: String,
    pub project_id: Uuid,
    pub api_key: String,
    pub api_key_id: Uuid,
    /// The admin API of this cluster, with the admin token.
    pub admin: AdminClient,
    pub http: reqwest::Client,
    pub pool: PgPool,
    pub config: Config,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    projector: JoinHandle<()>,
    // Last: dropped after the services are stopped.
    _isolation: Isolation,
}

fn key32() -> String {
    STANDARD.encode(rand_bytes())
}

fn rand_bytes() -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    out[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    out
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Starts the three services with configuration overrides (`("ingress.max_request_bytes", "1000")`).
pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    init_logging();
    let isolation = Isolation::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind ingress");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let base_url = format!("http://{addr}");
    let mut settings: Vec<(&str, String)> = vec![
        ("database_url", isolation.db_url.clone()),
        ("nats_url", nats_url()),
        ("nats_prefix", isolation.prefix.clone()),
        ("admin_token", ADMIN_TOKEN.into()),
        ("master_key", key32()),
        ("session_secret", key32()),
        ("allow_insecure_upstreams", "true".into()),
        // Test upstreams live on loopback.
        ("allow_private_upstreams", "true".into()),
        ("ingress.public_url", base_url.clone()),
        ("ingress.listen", addr.to_string()),
        ("ingress.metrics_listen", "127.0.0.1:0".into()),
        ("worker.health_listen", "127.0.0.1:0".into()),
        ("projector.health_listen", "127.0.0.1:0".into()),
        ("worker.ack_wait_secs", "5".into()),
        // JetStream reserves max_bytes up front; parallel tests need small streams.
        ("streams.events_max_bytes", (64 << 20).to_string()),
        ("streams.commands_max_bytes", (32 << 20).to_string()),
        ("streams.sessions_max_bytes", (8 << 20).to_string()),
        ("streams.idempotency_max_bytes", (16 << 20).to_string()),
        ("streams.cancelled_max_bytes", (4 << 20).to_string()),
        ("streams.approvals_max_bytes", (4 << 20).to_string()),
        ("streams.tasks_max_bytes", (4 << 20).to_string()),
    ];
    settings.extend(overrides.iter().map(|(k, v)| (*k, v.to_string())));
    let config = Config::with_overrides(&settings).expect("test configuration is valid");

    let (stop, stop_rx) = watch::channel(false);
    let state = tengine_ingress::AppState::connect(config.clone())
        .await
        .expect("ingress connects");
    let metrics_addr = tengine_ingress::spawn_operator_listener(&state)
        .await
        .expect("operator listener");
    let worker = tengine_worker::Worker::connect(config.clone())
        .await
        .expect("worker connects");
    let projector = tengine_projector::Projector::connect(config.clone())
        .await
        .expect("projector connects");
    let tasks = vec![
        tokio::spawn({
            let rx = stop_rx.clone();
            async move {
                let _ = tengine_ingress::serve(listener, state, stopped(rx)).await;
            }
        }),
        tokio::spawn({
            let rx = stop_rx.clone();
            async move {
                let _ = worker.run(stopped(rx)).await;
            }
        }),
    ];
    let projector = tokio::spawn({
        let rx = stop_rx.clone();
        async move {
            let _ = projector.run(stopped(rx)).await;
        }
    });
    let pool = PgPool::connect(&isolation.db_url).await.expect("test pool");
    let http = reqwest::Client::new();
    let mut app = TestApp {
        mcp_url: format!("{base_url}/mcp"),
        metrics_url: format!("http://{metrics_addr}"),
        admin: AdminClient::new(http.clone(), base_url.clone(), ADMIN_TOKEN),
        base_url,
        project_id: Uuid::nil(),
        api_key: String::new(),
        api_key_id: Uuid::nil(),
        http,
        pool,
        config,
        stop,
        tasks,
        projector,
        _isolation: isolation,
    };
    app.project_id = app.admin.create_project("test").await;
    let key = app.admin.create_api_key(app.project_id, &[]).await;
    app.api_key_id = key.id;
    app.api_key = key.key;
    app
}

/// Another ingress instance of the same cluster (same database, streams, secrets).
pub struct ExtraIngress {
    pub base_url: String,
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ExtraIngress {
    /// Stops it gracefully and waits until it has.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
        self.projector.abort();
    }
}

impl TestApp {
    /// Starts another ingress of this cluster, on `addr` or a free port.
    pub async fn spawn_ingress(&self, addr: Option<SocketAddr>) -> ExtraIngress {
        let listener = tokio::net::TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().expect("addr")))
            .await
            .expect("bind extra ingress");
        let addr = listener.local_addr().expect("addr");
        let state = tengine_ingress::AppState::connect(self.config.clone())
            .await
            .expect("extra ingress connects");
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let _ = tengine_ingress::serve(listener, state, stopped(rx)).await;
        });
        ExtraIngress {
            base_url: format!("http://{addr}"),
            addr,
            stop,
            task,
        }
    }

    /// Ends the projector at once, as if its process were killed: calls still
    /// run, run history stops.
    pub fn kill_projector(&self) {
        self.projector.abort();
    }

    /// Starts another worker of this cluster; it stops when the returned sender is
    /// dropped or set.
    pub async fn spawn_worker(&self) -> watch::Sender<bool> {
        let worker = tengine_worker::Worker::connect(self.config.clone())
            .await
            .expect("extra worker connects");
        let (stop, rx) = watch::channel(false);
        tokio::spawn(async move {
            let _ = worker.run(stopped(rx)).await;
        });
        stop
    }

    /// Registers a tool in the test project; panics unless it is created.
    pub async fn create_tool(&self, spec: ToolSpec) -> Value {
        self.admin.create_tool(self.project_id, spec).await
    }

    pub fn session(&self) -> mcp::RawSession {
        mcp::RawSession::new(self.http.clone(), self.mcp_url.clone(), self.api_key.clone())
    }
}

/// A Standard Webhooks secret for tests.
pub fn signing_secret() -> String {
    format!("whsec_{}", STANDARD.encode(rand_bytes()))
}

pub type Shared<T> = Arc<std::sync::Mutex<T>>;
