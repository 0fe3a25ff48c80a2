//! Per-key state has bounds: a real `tengine ingress` process takes 20,000
//! initialize + DELETE pairs from one API key, and the state they leave (ended
//! sessions, mirrored on every instance), the process's memory and another
//! project's latency stay bounded.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures::StreamExt;
use serde_json::json;
use tengine_tests::{ADMIN_TOKEN, AdminClient, Isolation, free_port, mcp::RawSession};

const PAIRS: usize = 20_000;
const CONCURRENCY: usize = 32;
const WRITES_PER_SECOND: u32 = 20;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn ping_latency(session: &mut RawSession, n: usize) -> Duration {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let reply = session.request("ping", json!({})).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        samples.push(started.elapsed());
    }
    median(samples)
}

fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_flood_from_one_key_stays_bounded() {
    let isolation = Isolation::new().await;
    let (port, metrics_port) = (free_port(), free_port());
    let key = |b: u8| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([b; 32])
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tengine"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TENGINE_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .arg("ingress")
        .envs([
            ("TENGINE_DATABASE_URL", isolation.db_url.clone()),
            ("TENGINE_NATS_URL", tengine_tests::nats_url()),
            ("TENGINE_NATS_PREFIX", isolation.prefix.clone()),
            ("TENGINE_ADMIN_TOKEN", ADMIN_TOKEN.into()),
            ("TENGINE_MASTER_KEY", key(1)),
            ("TENGINE_SESSION_SECRET", key(2)),
            ("TENGINE_INGRESS__LISTEN", format!("127.0.0.1:{port}")),
            ("TENGINE_INGRESS__PUBLIC_URL", format!("http://127.0.0.1:{port}")),
            ("TENGINE_INGRESS__METRICS_LISTEN", format!("127.0.0.1:{metrics_port}")),
            (
                "TENGINE_INGRESS__SESSION_WRITES_PER_SECOND",
                WRITES_PER_SECOND.to_string(),
            ),
            ("TENGINE_STREAMS__EVENTS_MAX_BYTES", (64u64 << 20).to_string()),
            ("TENGINE_STREAMS__COMMANDS_MAX_BYTES", (32u64 << 20).to_string()),
            ("TENGINE_STREAMS__SESSIONS_MAX_BYTES", (8u64 << 20).to_string()),
            ("TENGINE_STREAMS__IDEMPOTENCY_MAX_BYTES", (16u64 << 20).to_string()),
            ("TENGINE_STREAMS__CANCELLED_MAX_BYTES", (4u64 << 20).to_string()),
            ("RUST_LOG", "error".into()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tengine ingress");
    let pid = child.id();
    let _ingress = Killed(child);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(60);
    while http.get(format!("{base}/v1/health")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the ingress did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin = AdminClient::new(http.clone(), base.clone(), ADMIN_TOKEN);
    let mut keys = Vec::new();
    for name in ["noisy", "quiet"] {
        let project = admin.create_project(name).await;
        keys.push(admin.create_api_key(project, &[]).await.key);
    }
    let (noisy, quiet) = (keys[0].clone(), keys[1].clone());
    let mut other = RawSession::new(http.clone(), format!("{base}/mcp"), quiet);
    other.initialize().await;
    ping_latency(&mut other, 50).await;
    let idle = ping_latency(&mut other, 200).await;
    let rss_before = rss_kib(pid);

    // The flood: initialize + DELETE, 32 at a time.
    let started = Instant::now();
    let statuses: Vec<u16> = futures::stream::iter(0..PAIRS)
        .map(|_| {
            let (http, base, noisy) = (http.clone(), base.clone(), noisy.clone());
            async move {
                let mut session = RawSession::new(http.clone(), format!("{base}/mcp"), noisy.clone());
                session.initialize().await;
                let sid = session.session_id.clone().expect("session id");
                http.delete(format!("{base}/mcp"))
                    .bearer_auth(&noisy)
                    .header("mcp-session-id", sid)
                    .header("mcp-protocol-version", "2025-11-25")
                    .send()
                    .await
                    .expect("DELETE")
                    .status()
                    .as_u16()
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let flood = started.elapsed();
    let ended = statuses.iter().filter(|s| **s == 204).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(ended + limited, PAIRS, "every DELETE ended its session or was limited");
    // The key's writes are held to its rate (burst: twice the rate).
    let allowed = (flood.as_secs_f64() * f64::from(WRITES_PER_SECOND)).ceil() as usize + 2 * WRITES_PER_SECOND as usize;
    assert!(
        ended <= allowed,
        "{ended} sessions ended in {flood:?}; the key may end at most {allowed}"
    );

    // What the flood left: few entries, bounded memory, and the other project unaffected.
    let metrics = http
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let held = gauge(&metrics, "tengine_ingress_session_states").expect("the session-state gauge");
    assert!(held <= ended as f64, "{held} states held for {ended} ended sessions");
    let rss_after = rss_kib(pid);
    let grown_mib = rss_after.saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 64,
        "the ingress grew by {grown_mib} MiB ({rss_before} → {rss_after} KiB) over {PAIRS} pairs"
    );
    let after = ping_latency(&mut other, 200).await;
    // Medians of 200 pings each, side by side; 1 ms of slack for a loaded 2-core machine.
    assert!(
        after <= idle * 2 + Duration::from_millis(1),
        "another project's ping: {after:?} after the flood, {idle:?} idle"
    );
    println!(
        "{PAIRS} pairs in {flood:?}: {ended} ended, {limited} limited (429); {held} states held; RSS {rss_before} → \
         {rss_after} KiB; another project's ping median {idle:?} idle, {after:?} after"
    );
}
