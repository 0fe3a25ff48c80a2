//! `tengine-load`: the load generator behind `loadtest/` (see loadtest/README.md).
//!
//! - `run`: `tools/call` through Tengine (or plain POSTs straight to an upstream)
//!   at a fixed rate or a fixed concurrency for a duration; HDR latency
//!   percentiles, throughput, errors and the client's own CPU use.
//! - `sessions`: open many MCP sessions (optionally each with its GET stream) and
//!   hold them, for the ingress memory-per-session scenario.
//! - `upstream`: a minimal HTTP API with a configurable latency, the target of
//!   every scenario.
//! - `setup`: a project, an API key and a tool pointing at an upstream, through
//!   the admin API.
//! - `floor`: the design's floor with async-nats alone (`run --floor` calls it).

mod console;
mod floor;
mod mcp;
mod report;
mod revocation;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use tengine_tests::ToolSpec;

use crate::mcp::{Outcome, Session};
use crate::report::{Recorder, Summary};

#[derive(Parser)]
#[command(name = "tengine-load", version, about = "Load generator for Tengine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Call a tool at a fixed rate or concurrency and report latency percentiles.
    Run(RunArgs),
    /// Open many sessions and hold them (ingress memory per idle session).
    Sessions(SessionArgs),
    /// Serve a minimal upstream API: POST /call answers {"ok":true} after --delay-ms.
    Upstream {
        #[arg(long, default_value = "127.0.0.1:8790")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// Revoke the API key while calls flow through every ingress; fail if anything
    /// was admitted or sent later than the bound after the revocation answered.
    Revocation(revocation::RevocationArgs),
    /// Time the web console's pages (p50/p95 per page) for a project.
    Console(console::ConsoleArgs),
    /// The design's floor without Tengine (async-nats alone): its worker, its log
    /// reader, or removing its streams. `run --floor` is its caller.
    Floor(floor::FloorArgs),
    /// Delete the JetStream streams and KV buckets of a NATS prefix (after a scenario).
    Teardown {
        #[arg(long, env = "TENGINE_NATS_URL", default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        #[arg(long, env = "TENGINE_NATS_PREFIX")]
        prefix: String,
    },
    /// Print the messages ever stored in each stream of a NATS prefix (its last
    /// sequence number), as JSON: the difference of two readings is what was stored.
    Stored {
        #[arg(long, env = "TENGINE_NATS_URL", default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        #[arg(long, env = "TENGINE_NATS_PREFIX")]
        prefix: String,
    },
    /// Create a project, an API key and a tool named `load` calling UPSTREAM/call; prints shell exports.
    Setup {
        #[arg(long, env = "TENGINE_ADMIN_URL", default_value = "http://127.0.0.1:8700")]
        admin_url: String,
        #[arg(long, env = "TENGINE_ADMIN_TOKEN")]
        admin_token: String,
        /// Base URL of the upstream (plain http on loopback needs the dev settings).
        #[arg(long)]
        upstream: String,
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
}

#[derive(Args)]
struct Target {
    /// MCP endpoint (through Tengine), e.g. http://127.0.0.1:8700/mcp.
    #[arg(long, env = "TENGINE_MCP_URL")]
    url: String,
    /// API key (`tengine_…`) or member session token.
    #[arg(long, env = "TENGINE_API_KEY", default_value = "")]
    token: String,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    target: Target,
    /// Call this URL with a plain POST of the arguments instead of MCP (the baseline).
    #[arg(long)]
    direct: bool,
    /// Call the design's floor instead (async-nats alone; see `floor`).
    #[arg(long, conflicts_with = "direct")]
    floor: bool,
    #[command(flatten)]
    floor_target: floor::Target,
    #[arg(long, default_value = "load")]
    tool: String,
    /// Tool arguments as JSON.
    #[arg(long, default_value = r#"{"message":"hello"}"#)]
    arguments: String,
    /// Calls per second (open model: latency counts from the intended send time).
    #[arg(long, conflicts_with = "concurrency")]
    rate: Option<f64>,
    /// Callers each waiting for its answer before the next call (closed model).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring (connections, caches, JIT-free but still warm-up).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// MCP sessions the calls are spread over (2025-11-25).
    #[arg(long, default_value_t = 16)]
    sessions: usize,
    /// The MCP revision: 2025-11-25 (sessions) or 2026-07-28 (stateless requests, no session).
    #[arg(long, default_value = mcp::PROTOCOL_VERSION, value_parser = [mcp::PROTOCOL_VERSION, mcp::STATELESS_VERSION])]
    revision: String,
    /// Rate mode: at most this many calls in flight; sends beyond it are counted as skipped.
    #[arg(long, default_value_t = 2048)]
    max_in_flight: usize,
    /// Label printed with the figures.
    #[arg(long, default_value = "run")]
    label: String,
    /// Also print the summary as one JSON line (prefixed `RESULT `).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SessionArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// Also keep each session's GET stream open.
    #[arg(long)]
    streams: bool,
    /// Seconds to hold the sessions before closing them (DELETE).
    #[arg(long, default_value_t = 10)]
    hold: u64,
    /// Concurrent initializations.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(args).await,
        Command::Sessions(args) => sessions(args).await,
        Command::Console(args) => console::run(args).await,
        Command::Floor(args) => floor::run(args).await,
        Command::Revocation(args) => revocation::run(args).await,
        Command::Upstream { listen, delay_ms } => upstream(listen, delay_ms).await,
        Command::Teardown { nats_url, prefix } => {
            let client = async_nats::connect(&nats_url).await?;
            tengine_core::Topology::new(prefix)
                .delete_all(&async_nats::jetstream::new(client))
                .await;
            Ok(())
        }
        Command::Stored { nats_url, prefix } => stored(&nats_url, &prefix).await,
        Command::Setup {
            admin_url,
            admin_token,
            upstream,
            timeout_ms,
        } => setup(&admin_url, &admin_token, &upstream, timeout_ms).await,
    }
}

async fn stored(nats_url: &str, prefix: &str) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await?);
    let mut counts = serde_json::Map::new();
    for name in tengine_core::Topology::new(prefix).streams() {
        // A stream not created (yet) has stored nothing.
        let last = match js.get_stream(&name).await {
            Ok(mut stream) => stream.info().await.map(|info| info.state.last_sequence).unwrap_or(0),
            Err(_) => 0,
        };
        counts.insert(name, json!(last));
    }
    println!("{}", Value::Object(counts));
    Ok(())
}

fn http_client(pool: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(pool)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()?)
}

struct Caller {
    client: reqwest::Client,
    url: String,
    token: String,
    tool: String,
    arguments: Value,
    sessions: Vec<Session>,
    /// 2026-07-28: no sessions; each call a fresh JSON-RPC id.
    stateless: bool,
    /// `--floor`: the caller of the design's floor.
    floor: Option<floor::Client>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Caller {
    async fn call(&self, slot: usize) -> Outcome {
        if let Some(floor) = &self.floor {
            return floor.call().await;
        }
        if self.stateless {
            let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return mcp::call_stateless(&self.client, &self.url, &self.token, id, &self.tool, &self.arguments).await;
        }
        if self.sessions.is_empty() {
            return mcp::call_direct(&self.client, &self.url, &self.arguments).await;
        }
        let session = &self.sessions[slot % self.sessions.len()];
        mcp::call_tool(
            &self.client,
            &self.url,
            &self.token,
            session,
            &self.tool,
            &self.arguments,
        )
        .await
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let arguments: Value = serde_json::from_str(&args.arguments).context("--arguments must be JSON")?;
    let width = args.concurrency.unwrap_or(args.max_in_flight.min(512));
    let client = http_client(width)?;
    let through_tengine = !args.direct && !args.floor;
    let stateless = through_tengine && args.revision == mcp::STATELESS_VERSION;
    let floor = if args.floor {
        Some(floor::Client::connect(&args.floor_target, serde_json::to_vec(&arguments)?).await?)
    } else {
        None
    };
    let mut sessions = Vec::new();
    if through_tengine && !stateless {
        for _ in 0..args.sessions.max(1) {
            sessions.push(mcp::open_session(&client, &args.target.url, &args.target.token).await?);
        }
    }
    let caller = Arc::new(Caller {
        client,
        url: args.target.url.clone(),
        token: args.target.token.clone(),
        tool: args.tool.clone(),
        arguments,
        sessions,
        stateless,
        floor,
        next_id: std::sync::atomic::AtomicU64::new(1),
    });
    let warmup = Duration::from_secs_f64(args.warmup.max(0.0));
    let duration = Duration::from_secs_f64(args.duration.max(0.1));
    let recorder = Arc::new(Mutex::new(Recorder::new()));
    let (mode, skipped, window, cpu) = match (args.rate, args.concurrency) {
        (Some(rate), _) => {
            if !(rate > 0.0 && rate <= 1_000_000.0) {
                bail!("--rate must be in (0, 1000000]");
            }
            let (skipped, window, cpu) =
                fixed_rate(&caller, &recorder, rate, args.max_in_flight, warmup, duration).await;
            (format!("rate {rate}/s"), skipped, window, cpu)
        }
        (None, concurrency) => {
            let concurrency = concurrency.unwrap_or(16).clamp(1, 100_000);
            let (window, cpu) = fixed_concurrency(&caller, &recorder, concurrency, warmup, duration).await;
            (format!("concurrency {concurrency}"), 0, window, cpu)
        }
    };
    let recorder = recorder.lock().map_err(|_| anyhow::anyhow!("recorder poisoned"))?;
    let summary = Summary::new(&args.label, mode, &recorder, skipped, window, cpu);
    summary.print();
    if args.json {
        println!("RESULT {}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

fn record(recorder: &Mutex<Recorder>, outcome: Outcome, latency: Duration) {
    if let Ok(mut r) = recorder.lock() {
        r.record(outcome, latency);
    }
}

/// Closed model: `concurrency` callers, each sending its next call when the last one answered.
async fn fixed_concurrency(
    caller: &Arc<Caller>,
    recorder: &Arc<Mutex<Recorder>>,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> (Duration, Duration) {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|slot| {
            let caller = caller.clone();
            let recorder = recorder.clone();
            tokio::spawn(async move {
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let outcome = caller.call(slot).await;
                    if sent >= measure_from {
                        record(&recorder, outcome, sent.elapsed());
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_start = report::cpu_time();
    for task in tasks {
        let _ = task.await;
    }
    (duration, report::cpu_time().saturating_sub(cpu_start))
}

/// How late tokio's millisecond timer may wake a sender without the delay counting.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// Open model: a call every 1/rate seconds whatever the answers do; latency runs
/// from the intended send time, so a stalled target cannot hide its stall
/// (coordinated omission). In-flight calls are bounded.
async fn fixed_rate(
    caller: &Arc<Caller>,
    recorder: &Arc<Mutex<Recorder>>,
    rate: f64,
    max_in_flight: usize,
    warmup: Duration,
    duration: Duration,
) -> (u64, Duration, Duration) {
    let period = Duration::from_secs_f64(1.0 / rate);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut cpu_start = None;
    let mut skipped = 0u64;
    let mut sent = 0u64;
    loop {
        let intended = start + period.mul_f64(sent as f64);
        if intended >= end {
            break;
        }
        if intended > Instant::now() {
            tokio::time::sleep_until(intended.into()).await;
        }
        if cpu_start.is_none() && intended >= measure_from {
            cpu_start = Some(report::cpu_time());
        }
        let slot = sent as usize;
        sent += 1;
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            if intended >= measure_from {
                skipped += 1;
            }
            continue;
        };
        let caller = caller.clone();
        let recorder = recorder.clone();
        // The timer wakes up to ~1 ms late: a send that late only because of the
        // timer counts from when it went out; one later than that (the generator
        // fell behind) counts from its intended time.
        let now = Instant::now();
        let start = if now.saturating_duration_since(intended) <= TIMER_SLACK {
            now
        } else {
            intended
        };
        tokio::spawn(async move {
            let outcome = caller.call(slot).await;
            if intended >= measure_from {
                record(&recorder, outcome, start.elapsed());
            }
            drop(permit);
        });
    }
    // Let the calls still in flight finish (bounded by the client timeout).
    let _ = slots.acquire_many(max_in_flight.max(1) as u32).await;
    let cpu = report::cpu_time().saturating_sub(cpu_start.unwrap_or_else(report::cpu_time));
    (skipped, duration, cpu)
}

async fn sessions(args: SessionArgs) -> anyhow::Result<()> {
    let client = http_client(args.parallel)?;
    let started = Instant::now();
    let (url, token) = (args.target.url.as_str(), args.target.token.as_str());
    let slots = Arc::new(tokio::sync::Semaphore::new(args.parallel.max(1)));
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..args.count {
        let permit = slots.clone().acquire_owned().await?;
        let (client, url, token) = (client.clone(), url.to_string(), token.to_string());
        let streams = args.streams;
        opening.spawn(async move {
            let session = mcp::open_session(&client, &url, &token).await?;
            let stream = if streams {
                Some(mcp::open_stream(&client, &url, &token, &session).await?)
            } else {
                None
            };
            drop(permit);
            anyhow::Ok((session, stream))
        });
    }
    let mut held = Vec::with_capacity(args.count);
    let mut failed = 0usize;
    while let Some(joined) = opening.join_next().await {
        match joined {
            Ok(Ok(session)) => held.push(session),
            Ok(Err(err)) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("session failed: {err:#}");
                }
            }
            Err(_) => failed += 1,
        }
    }
    println!(
        "SESSIONS open={} failed={} streams={} took_s={:.1}",
        held.len(),
        failed,
        args.streams,
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    // Ends them on the server too (DELETE), so the next scenario starts clean.
    let mut closing = tokio::task::JoinSet::new();
    for (session, stream) in held {
        drop(stream);
        let permit = slots.clone().acquire_owned().await?;
        let (client, url, token) = (client.clone(), url.to_string(), token.to_string());
        closing.spawn(async move {
            let _ = client
                .delete(&url)
                .bearer_auth(&token)
                .header("mcp-session-id", &session.id)
                .header("mcp-protocol-version", mcp::PROTOCOL_VERSION)
                .send()
                .await;
            drop(permit);
        });
    }
    while closing.join_next().await.is_some() {}
    if failed > 0 {
        bail!("{failed} sessions could not be opened");
    }
    Ok(())
}

async fn upstream(listen: std::net::SocketAddr, delay_ms: u64) -> anyhow::Result<()> {
    use axum::{Json, Router, routing::post};
    let delay = Duration::from_millis(delay_ms);
    let app = Router::new().route(
        "/call",
        post(move |body: bytes::Bytes| async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Json(json!({"ok": true, "bytes": body.len()}))
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("upstream listening on {} (delay {delay_ms} ms)", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn setup(admin_url: &str, admin_token: &str, upstream: &str, timeout_ms: u64) -> anyhow::Result<()> {
    let client = http_client(1)?;
    let admin = admin_url.trim_end_matches('/');
    // Not the tests' AdminClient: that one panics on a failure, a command reports it.
    let post = |path: String, body: Value| {
        let client = client.clone();
        let url = format!("{admin}{path}");
        async move {
            let response = client.post(&url).bearer_auth(admin_token).json(&body).send().await?;
            let status = response.status();
            let value: Value = response.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                bail!("POST {url} answered {status}: {value}");
            }
            anyhow::Ok(value)
        }
    };
    let project = post("/v1/projects".into(), json!({"name": "loadtest"})).await?;
    let project_id = project["id"].as_str().context("project id")?.to_string();
    let key = post(
        format!("/v1/projects/{project_id}/api-keys"),
        json!({"name": "loadtest"}),
    )
    .await?;
    let key_id = key["id"].as_str().context("api key id")?.to_string();
    let key = key["key"].as_str().context("api key")?.to_string();
    let tool = ToolSpec::post("load", upstream, "/call")
        .description("Load-test tool: POST the arguments to the upstream's /call.")
        .schema(json!({"type": "object", "properties": {"message": {"type": "string"}}}))
        .timeout_ms(timeout_ms)
        .annotations(json!({"idempotentHint": true}));
    post(format!("/v1/projects/{project_id}/tools"), tool.into()).await?;
    println!("export TENGINE_LOAD_PROJECT_ID={project_id}");
    println!("export TENGINE_API_KEY={key}");
    println!("export TENGINE_LOAD_API_KEY_ID={key_id}");
    Ok(())
}
