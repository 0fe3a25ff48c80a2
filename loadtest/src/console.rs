//! `tengine-load console`: how fast the web console's pages answer. Signs in
//! with the admin token (the sign-in form's CSRF dance, as a browser does), then
//! GETs each page one request after another and reports p50/p95 per page, from
//! the client's side (HTTP on loopback included).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::header;
use serde_json::json;

#[derive(clap::Args)]
pub struct ConsoleArgs {
    /// The ingress's base URL.
    #[arg(long, env = "TENGINE_ADMIN_URL", default_value = "http://127.0.0.1:8700")]
    base_url: String,
    #[arg(long, env = "TENGINE_ADMIN_TOKEN")]
    admin_token: String,
    /// The project whose pages are timed.
    #[arg(long, env = "TENGINE_LOAD_PROJECT_ID")]
    project: String,
    /// Timed requests per page (after 5 untimed ones).
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// A tool name for the filtered Runs page.
    #[arg(long, default_value = "load")]
    tool: String,
    /// Also print one JSON line per page (prefixed `RESULT `).
    #[arg(long)]
    json: bool,
}

/// The value of `name="csrf" value="…"` in a page.
fn csrf(page: &str) -> Option<String> {
    let marker = "name=\"csrf\" value=\"";
    let start = page.find(marker)? + marker.len();
    page[start..].split('"').next().map(str::to_string)
}

/// `name=value` of a `Set-Cookie` named `name`.
fn cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
}

async fn sign_in(http: &reqwest::Client, console: &str, token: &str) -> anyhow::Result<String> {
    let page = http.get(format!("{console}/sign-in")).send().await?;
    let form_cookie = cookie(&page, "tengine_console_sign_in").context("the sign-in cookie")?;
    let csrf = csrf(&page.text().await?).context("the sign-in form's csrf")?;
    let answer = http
        .post(format!("{console}/sign-in"))
        .header(header::COOKIE, form_cookie)
        .form(&[("csrf", csrf.as_str()), ("token", token)])
        .send()
        .await?;
    if answer.status() != 303 {
        bail!("sign-in answered {}", answer.status());
    }
    cookie(&answer, "tengine_console").context("a session cookie")
}

/// The `q`-quantile of sorted durations, in ms.
fn quantile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

pub async fn run(args: ConsoleArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let console = format!("{}/console", args.base_url.trim_end_matches('/'));
    let session = sign_in(&http, &console, &args.admin_token).await?;
    let root = format!("{console}/projects/{}", args.project);
    let get = |url: String| {
        let http = http.clone();
        let session = session.clone();
        async move {
            let response = http.get(&url).header(header::COOKIE, session).send().await?;
            let status = response.status();
            let body = response.text().await?;
            if status != 200 {
                bail!("{url} answered {status}");
            }
            Ok::<String, anyhow::Error>(body)
        }
    };
    // The newest run, for the Run detail page.
    let runs = get(format!("{root}/runs")).await?;
    let run = runs
        .split("/runs/")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("a run on the Runs page")?
        .to_string();
    let pages = [
        ("Overview", root.clone()),
        ("Runs", format!("{root}/runs")),
        (
            "Runs, by tool and status",
            format!("{root}/runs?tool={}&status=succeeded", args.tool),
        ),
        ("Runs, failed (none)", format!("{root}/runs?status=failed")),
        ("Run detail", format!("{root}/runs/{run}")),
        ("Usage by tool, 30 days", format!("{root}/usage?by=tool&period=month")),
        ("Usage by hour, 7 days", format!("{root}/usage?by=hour&period=week")),
        ("Tools", format!("{root}/tools")),
    ];
    println!("| page | requests | p50 ms | p95 ms | max ms |");
    println!("|---|---|---|---|---|");
    for (name, url) in pages {
        for _ in 0..5 {
            get(url.clone()).await?;
        }
        let mut took = Vec::with_capacity(args.requests);
        for _ in 0..args.requests {
            let start = Instant::now();
            get(url.clone()).await?;
            took.push(start.elapsed());
        }
        took.sort();
        let (p50, p95, max) = (quantile(&took, 0.5), quantile(&took, 0.95), quantile(&took, 1.0));
        println!("| {name} | {} | {p50:.2} | {p95:.2} | {max:.2} |", args.requests);
        if args.json {
            println!(
                "RESULT {}",
                json!({"page": name, "requests": args.requests, "p50_ms": p50, "p95_ms": p95, "max_ms": max})
            );
        }
    }
    Ok(())
}
