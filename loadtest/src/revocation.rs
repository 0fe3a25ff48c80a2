//! `revocation`: the bounded-staleness proof of issue 17 under real load. Calls
//! flow at a fixed rate (open model) through every given ingress; the API key is
//! revoked through the admin API while they do; this process is also the tool's
//! upstream, so it sees every API request the workers send. It reports, and fails
//! on: a call admitted (given a Run ID) that was sent more than `--bound-ms` after
//! the revocation answered, and an API request that arrived later than that.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use axum::{Json, Router, routing::post};
use clap::Args;
use serde_json::{Value, json};

#[derive(Args)]
pub struct RevocationArgs {
    /// MCP endpoints the calls are spread over (one per ingress), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    urls: Vec<String>,
    #[arg(long, env = "TENGINE_API_KEY")]
    token: String,
    #[arg(long, env = "TENGINE_ADMIN_URL")]
    admin_url: String,
    #[arg(long, env = "TENGINE_ADMIN_TOKEN")]
    admin_token: String,
    #[arg(long, env = "TENGINE_LOAD_PROJECT_ID")]
    project_id: String,
    #[arg(long, env = "TENGINE_LOAD_API_KEY_ID")]
    key_id: String,
    /// Where to serve the tool's upstream (`POST /call`); the tool must point here.
    #[arg(long)]
    upstream_listen: std::net::SocketAddr,
    /// Calls per second, all ingress together.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of calls before the revocation.
    #[arg(long, default_value_t = 4.0)]
    before: f64,
    /// Seconds of calls after the revocation answered.
    #[arg(long, default_value_t = 2.0)]
    after: f64,
    /// The promise: nothing admitted, and no API request, later than this after the revocation answered.
    #[arg(long, default_value_t = 100)]
    bound_ms: u64,
    /// At most this many calls in flight (sends beyond it are skipped and counted).
    #[arg(long, default_value_t = 2048)]
    max_in_flight: usize,
}

/// One call: when it went out, its HTTP status, whether it was admitted (has a Run ID).
struct Sent {
    at: Instant,
    status: u16,
    admitted: bool,
}

pub async fn run(args: RevocationArgs) -> anyhow::Result<()> {
    if !(args.rate > 0.0 && args.rate <= 100_000.0) {
        bail!("--rate must be in (0, 100000]");
    }
    let arrivals = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let listener = tokio::net::TcpListener::bind(args.upstream_listen)
        .await
        .with_context(|| format!("binding {}", args.upstream_listen))?;
    let seen = arrivals.clone();
    let upstream = Router::new().route(
        "/call",
        post(move || {
            let seen = seen.clone();
            async move {
                if let Ok(mut seen) = seen.lock() {
                    seen.push(Instant::now());
                }
                Json(json!({"ok": true}))
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, upstream).await });

    let client = crate::http_client(args.max_in_flight.min(512))?;
    let calls = Arc::new(Mutex::new(Vec::<Sent>::new()));
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let start = Instant::now();
    let revoke_at = start + Duration::from_secs_f64(args.before.max(0.5));
    let slots = Arc::new(tokio::sync::Semaphore::new(args.max_in_flight.max(1)));

    // The revocation, on its own task, at `revoke_at`.
    let revoking = {
        let client = client.clone();
        let url = format!(
            "{}/v1/projects/{}/api-keys/{}",
            args.admin_url.trim_end_matches('/'),
            args.project_id,
            args.key_id
        );
        let token = args.admin_token.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(revoke_at.into()).await;
            let asked = Instant::now();
            let response = client.delete(&url).bearer_auth(&token).send().await?;
            let answered = Instant::now();
            if response.status().as_u16() != 204 {
                bail!("revoking answered {}", response.status());
            }
            anyhow::Ok((asked, answered))
        })
    };

    let mut sent = 0u64;
    let mut skipped = 0u64;
    let mut end = None;
    loop {
        let intended = start + period.mul_f64(sent as f64);
        if end.is_none() && revoking.is_finished() {
            end = Some(Instant::now() + Duration::from_secs_f64(args.after.max(0.5)));
        }
        if end.is_some_and(|end| intended >= end) {
            break;
        }
        // Bounded even if the revocation never answers.
        if intended > revoke_at + Duration::from_secs(30) {
            break;
        }
        if intended > Instant::now() {
            tokio::time::sleep_until(intended.into()).await;
        }
        let url = args.urls[(sent as usize) % args.urls.len()].clone();
        sent += 1;
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        let (client, token, calls) = (client.clone(), args.token.clone(), calls.clone());
        tokio::spawn(async move {
            let at = Instant::now();
            let (status, body) = stateless_call(&client, &url, &token, sent).await;
            let admitted = body
                .pointer("/result/_meta/tengine.dev~1runId")
                .is_some_and(Value::is_string);
            if let Ok(mut calls) = calls.lock() {
                calls.push(Sent { at, status, admitted });
            }
            drop(permit);
        });
    }
    let _ = slots
        .acquire_many(u32::try_from(args.max_in_flight.max(1)).unwrap_or(u32::MAX))
        .await;
    let (asked, answered) = revoking.await.context("the revocation task")??;
    // API requests of calls admitted just before the revocation may still be in flight.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let calls = calls.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let arrivals = arrivals.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let bound = answered + Duration::from_millis(args.bound_ms);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    // Signed milliseconds from the revocation's answer to `t`.
    let rel = |t: Instant| match t.checked_duration_since(answered) {
        Some(after) => ms(after),
        None => -ms(answered.duration_since(t)),
    };
    let before_rate = calls.iter().filter(|c| c.at < asked).count() as f64 / ms(asked - start) * 1000.0;
    let sent_after = calls.iter().filter(|c| c.at >= answered).count();
    let refused_after = calls.iter().filter(|c| c.at >= answered && c.status == 401).count();
    let admitted_after = calls.iter().filter(|c| c.admitted && c.at >= answered).count();
    let admitted_late = calls.iter().filter(|c| c.admitted && c.at >= bound).count();
    let last_admitted = calls
        .iter()
        .filter(|c| c.admitted)
        .map(|c| rel(c.at))
        .fold(f64::MIN, f64::max);
    let requests_late = arrivals.iter().filter(|t| **t >= bound).count();
    let last_request = arrivals.iter().map(|t| rel(*t)).fold(f64::MIN, f64::max);
    let summary = json!({
        "calls": calls.len(),
        "skipped": skipped,
        "rate_before_per_s": before_rate.round(),
        "revocation_ms": ms(answered - asked),
        "admitted": calls.iter().filter(|c| c.admitted).count(),
        "api_requests": arrivals.len(),
        "sent_after": sent_after,
        "refused_401_after": refused_after,
        "admitted_after_answer": admitted_after,
        "admitted_after_bound": admitted_late,
        "last_admitted_ms": last_admitted,
        "api_requests_after_bound": requests_late,
        "last_api_request_ms": last_request,
        "bound_ms": args.bound_ms,
    });
    println!(
        "revocation at {before_rate:.0} calls/s: answered in {:.1} ms; {sent_after} calls sent after it, \
         {refused_after} refused 401, {admitted_after} admitted; last admitted call sent {last_admitted:.1} ms \
         and last API request {last_request:.1} ms from the answer",
        ms(answered - asked)
    );
    println!("RESULT {summary}");
    if admitted_late > 0 || requests_late > 0 {
        bail!(
            "{admitted_late} calls admitted and {requests_late} API requests later than {} ms after the revocation \
             answered",
            args.bound_ms
        );
    }
    if sent_after == 0 || refused_after != sent_after {
        bail!("{sent_after} calls sent after the revocation, only {refused_after} refused with 401");
    }
    Ok(())
}

/// A 2026-07-28 `tools/call` of the tool `load`: its HTTP status (0: no answer)
/// and its JSON-RPC response (JSON or SSE).
async fn stateless_call(client: &reqwest::Client, url: &str, token: &str, id: u64) -> (u16, Value) {
    let request = crate::mcp::stateless_request(id, "load", &json!({"message": "revocation"}));
    match crate::mcp::stateless_post(client, url, token, "load", &request)
        .send()
        .await
    {
        Ok(response) => match crate::mcp::read(response).await {
            Some((status, message)) => (status, message.unwrap_or(Value::Null)),
            None => (0, Value::Null),
        },
        Err(_) => (0, Value::Null),
    }
}
