//! `tengine`: runs the services and drives the admin API.

mod admin;
mod demo;
mod export;
mod healthcheck;
use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use tengine_core::{Config, telemetry};
use tokio::sync::watch;

use crate::admin::AdminClient;

#[derive(Parser)]
#[command(name = "tengine", version, about = "Execution infrastructure for AI tool calls")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct AdminArgs {
    /// Base URL of an ingress (its admin API is under /v1).
    #[arg(long, env = "TENGINE_ADMIN_URL", default_value = "http://127.0.0.1:8700")]
    admin_url: String,
    /// Admin token (the ingress's TENGINE_ADMIN_TOKEN).
    #[arg(long, env = "TENGINE_ADMIN_TOKEN", hide_env_values = true, default_value = "")]
    admin_token: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the ingress (MCP endpoint and admin API).
    Ingress,
    /// Run a worker (executes tool calls).
    Worker,
    /// Run the projector (builds run history from the event log), or maintain it.
    Projector {
        #[command(subcommand)]
        command: Option<ProjectorCommand>,
    },
    /// Run ingress, worker and projector in one process (for laptops).
    Dev,
    /// Apply database migrations and exit.
    Migrate,
    /// GET a URL: exit 0 on a 2xx answer, 1 otherwise (container health checks; the image has no curl).
    Healthcheck {
        /// e.g. http://127.0.0.1:8701/healthz/ready
        url: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Tool secrets at rest.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Run the demo upstream API used by the demo project.
    DemoUpstream {
        #[arg(long, default_value = "127.0.0.1:8709")]
        listen: SocketAddr,
    },
    /// Demo project set-up.
    Demo {
        #[command(subcommand)]
        command: DemoCommand,
    },
    /// Projects.
    Projects {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: ProjectCommand,
    },
    /// Project API keys.
    Keys {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Tools.
    Tools {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: ToolCommand,
    },
    /// Integrations: MCP client connections inside a project.
    Integrations {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: IntegrationCommand,
    },
    /// ES256 public keys that sign member assertions.
    MemberKeys {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: MemberKeyCommand,
    },
    /// Members (the customer's end users).
    Members {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: MemberCommand,
    },
    /// Usage metering: billing export of closed hours (reads PostgreSQL and NATS directly).
    Usage {
        #[command(subcommand)]
        command: UsageCommand,
    },
    /// Run history.
    Runs {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: RunCommand,
    },
    /// Calls waiting for an operator's approval (tools with `approval = "operator"`).
    Approvals {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: ApprovalCommand,
    },
    /// MCP authorization (OAuth): the clients a project knows and the grants its members gave.
    Oauth {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: OAuthCommand,
    },
}

#[derive(Subcommand)]
enum OAuthCommand {
    /// Clients registered or fetched (metadata documents).
    Clients {
        #[arg(long)]
        project: String,
    },
    /// Grants (a member's consent to a client), revoked ones too.
    Grants {
        #[arg(long)]
        project: String,
    },
    /// Consents given or refused, grants revoked and why; newest first.
    Events {
        #[arg(long)]
        project: String,
    },
    /// Revoke a grant: its access and refresh tokens stop at once.
    Revoke {
        #[arg(long)]
        project: String,
        grant_id: String,
    },
}

#[derive(Subcommand)]
enum ApprovalCommand {
    /// The project's waiting calls, oldest first.
    List {
        #[arg(long)]
        project: String,
    },
    /// Approve a waiting call: it runs once.
    Approve {
        run_id: String,
        /// Recorded with the decision.
        #[arg(long)]
        note: Option<String>,
    },
    /// Reject a waiting call: it never reaches the API.
    Reject {
        run_id: String,
        /// Why (recorded; the caller's result says it).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum UsageCommand {
    /// Export closed hours of usage (or runs) as CSV or JSON lines, or, with
    /// --schedule, write each closed hour of every project to its own file once.
    Export(ExportArgs),
}

#[derive(clap::Args)]
struct ExportArgs {
    #[arg(long, required_unless_present = "schedule")]
    project: Option<uuid::Uuid>,
    /// Start (RFC 3339, inclusive; default: the beginning).
    #[arg(long)]
    from: Option<chrono::DateTime<chrono::Utc>>,
    /// End (RFC 3339, exclusive; default and at most: the end of the closed hours).
    #[arg(long)]
    to: Option<chrono::DateTime<chrono::Utc>>,
    #[arg(long, value_enum, default_value = "jsonl")]
    format: export::Format,
    /// Export runs (accepted in the range) instead of hourly usage.
    #[arg(long)]
    runs: bool,
    /// Continue after the position a previous export printed.
    #[arg(long)]
    cursor: Option<String>,
    /// Export at most this many rows (then continue with the printed cursor).
    #[arg(long)]
    limit: Option<u64>,
    /// Write to this file (appended to with --cursor) and keep the cursor in FILE.cursor.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Keep exporting every closed hour of every project to DIR/<project>/<hour>.jsonl.
    #[arg(long, requires = "dir", conflicts_with_all = ["project", "cursor", "output", "runs", "limit"])]
    schedule: bool,
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds between passes of --schedule.
    #[arg(long, default_value_t = 300)]
    interval_secs: u64,
    /// With --schedule: one pass, then exit.
    #[arg(long)]
    once: bool,
    /// Pause after each hour file (tests).
    #[arg(long, hide = true, default_value_t = 0)]
    throttle_ms: u64,
}

#[derive(Subcommand)]
enum ProjectorCommand {
    /// Replay the whole event log into fresh tables and replace run history and
    /// usage with the result (needs the database and NATS; services may keep running).
    Rebuild,
    /// List the events the projector could not apply (dead letters), or re-apply
    /// one after its cause was fixed (needs the database only).
    DeadLetters {
        /// Apply dead letter ID through the projector's code and mark it re-applied.
        #[arg(long, value_name = "ID")]
        reapply: Option<i64>,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Re-encrypt every tool secret under the current master key (after adding the
    /// old key to TENGINE_PREVIOUS_MASTER_KEYS and setting the new TENGINE_MASTER_KEY).
    Reseal,
}

#[derive(Subcommand)]
enum DemoCommand {
    /// Create or reuse the demo project, key and tools; write the env file.
    Seed {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long, default_value = "http://127.0.0.1:8709")]
        upstream_url: String,
        #[arg(long, default_value = ".tengine/env")]
        env_file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ProjectCommand {
    Create {
        name: String,
    },
    List,
    /// Set the networks (CIDR) the project's tools may reach although they are private.
    Allowlist {
        #[arg(long)]
        project: String,
        networks: Vec<String>,
    },
    /// Set quotas: a number, or `none` to remove the limit; omitted ones stay as they are.
    Quota {
        #[arg(long)]
        project: String,
        /// Calls per calendar month (UTC).
        #[arg(long)]
        monthly_calls: Option<String>,
        /// Calls per minute per member (per API key without a member session).
        #[arg(long)]
        member_calls_per_minute: Option<String>,
    },
    /// Keep request and response bodies in run history (off by default).
    Bodies {
        #[arg(long)]
        project: String,
        /// Store bodies: true or false.
        #[arg(long)]
        store: Option<bool>,
        /// Bytes kept of each body (1 to 1048576).
        #[arg(long)]
        max_bytes: Option<u64>,
        /// A JSON field path replaced by "[REDACTED]" (repeatable; replaces the list).
        #[arg(long = "redact")]
        redact: Vec<String>,
        /// Redact nothing (clears the list).
        #[arg(long, conflicts_with = "redact")]
        no_redact: bool,
    },
}

/// A limit given on the command line: a number, or `none`.
fn limit_arg(flag: &str, raw: &str) -> anyhow::Result<Value> {
    if raw.eq_ignore_ascii_case("none") {
        return Ok(Value::Null);
    }
    raw.parse::<u64>()
        .map(|n| json!(n))
        .map_err(|_| anyhow::anyhow!("--{flag} must be a number of calls or `none`, not `{raw}`"))
}

#[derive(Subcommand)]
enum IntegrationCommand {
    /// Create one; `--allow-tool` (repeatable) restricts the tools it sees.
    Create {
        #[arg(long)]
        project: String,
        name: String,
        #[arg(long = "allow-tool")]
        allow_tools: Vec<String>,
    },
    List {
        #[arg(long)]
        project: String,
    },
    /// Show one, with ready-to-paste client configuration.
    Get {
        #[arg(long)]
        project: String,
        integration_id: String,
    },
    /// Delete one: its keys and member sessions stop working at once.
    Delete {
        #[arg(long)]
        project: String,
        integration_id: String,
    },
    /// Create an API key in the integration (printed once, with client configuration).
    Key {
        #[arg(long)]
        project: String,
        integration_id: String,
        #[arg(long, default_value = "")]
        name: String,
    },
}

#[derive(Subcommand)]
enum MemberKeyCommand {
    /// Register a P-256 public key (SPKI PEM file) under a kid.
    Add {
        #[arg(long)]
        project: String,
        #[arg(long)]
        kid: String,
        #[arg(long)]
        public_key_file: PathBuf,
    },
    List {
        #[arg(long)]
        project: String,
    },
    Delete {
        #[arg(long)]
        project: String,
        kid: String,
    },
}

#[derive(Subcommand)]
enum MemberCommand {
    /// End every session of a member now.
    RevokeSessions {
        #[arg(long)]
        project: String,
        member_id: String,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create a key; it is printed once.
    Create {
        #[arg(long)]
        project: String,
        #[arg(long, default_value = "")]
        name: String,
        /// `call` (MCP) and/or `read` (the project's run history and usage); repeatable.
        #[arg(long = "scope", default_values_t = ["call".to_string()])]
        scopes: Vec<String>,
    },
    List {
        #[arg(long)]
        project: String,
    },
    Revoke {
        #[arg(long)]
        project: String,
        key_id: String,
    },
}

#[derive(Subcommand)]
enum ToolCommand {
    /// Register a tool from a JSON file (`-` for standard input).
    Create {
        #[arg(long)]
        project: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// Replace a tool from a JSON file.
    Update {
        #[arg(long)]
        project: String,
        name: String,
        #[arg(long)]
        file: PathBuf,
    },
    List {
        #[arg(long)]
        project: String,
    },
    Get {
        #[arg(long)]
        project: String,
        name: String,
    },
    Enable {
        #[arg(long)]
        project: String,
        name: String,
    },
    Disable {
        #[arg(long)]
        project: String,
        name: String,
    },
    Delete {
        #[arg(long)]
        project: String,
        name: String,
    },
    /// Import tools from an OpenAPI 3.0/3.1 document and print the report as a table
    /// (a dry run unless --apply; see docs/openapi-import.md).
    Import {
        #[arg(long)]
        project: String,
        /// A JSON or YAML file (`-` for standard input), or an http(s) URL the server fetches.
        document: String,
        /// Only operations with this tag (repeatable).
        #[arg(long)]
        tag: Vec<String>,
        /// Only operations whose path starts with this.
        #[arg(long)]
        path_prefix: Option<String>,
        /// Only this method (repeatable).
        #[arg(long)]
        method: Vec<String>,
        /// Only this operationId (repeatable).
        #[arg(long)]
        operation_id: Vec<String>,
        /// Put before every new tool's name.
        #[arg(long)]
        name_prefix: Option<String>,
        /// The API's URL, instead of the document's servers.
        #[arg(long)]
        base_url: Option<String>,
        /// Create and update the tools (without it nothing is written).
        #[arg(long)]
        apply: bool,
        /// Create new tools enabled (default: disabled, for review).
        #[arg(long)]
        enable: bool,
        /// Print the API's JSON report instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Show the request a call would send (secrets redacted), without sending it.
    Render {
        #[arg(long)]
        project: String,
        name: String,
        /// Arguments as a JSON object.
        #[arg(long, default_value = "{}")]
        args: String,
        /// A member as JSON, e.g. '{"id": "u1", "roles": ["admin"]}'.
        #[arg(long)]
        member: Option<String>,
    },
}

#[derive(Subcommand)]
enum RunCommand {
    List {
        #[arg(long)]
        project: String,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        tool: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    Get {
        run_id: String,
    },
    /// Run a finished run's call again, as a new run (same checks as an MCP call by its caller;
    /// needs the arguments run history kept: projects that store bodies).
    Redrive {
        #[arg(long)]
        project: String,
        run_id: String,
        /// A retry with the same key answers the same new run instead of running it twice.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}

/// A shutdown signal that several services can wait on.
fn shutdown_channel() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = tx.send(true);
    });
    rx
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

// Each service opens its probes' listener before connecting: live answers at once,
// ready says what it still waits for (a dependency, the migrations).

async fn run_ingress(config: Config, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.ingress.listen)
        .await
        .with_context(|| format!("binding the ingress on {}", config.ingress.listen))?;
    tengine_core::health::spawn_probes(config.ingress.metrics_listen, &config, "ingress").await?;
    let state = tengine_ingress::AppState::connect(config).await?;
    tengine_ingress::serve(listener, state, wait_for(stop)).await
}

async fn run_worker(config: Config, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    tengine_core::health::spawn_probes(config.worker.health_listen, &config, "worker").await?;
    let worker = tengine_worker::Worker::connect(config).await?;
    worker.run(wait_for(stop)).await
}

async fn run_projector(config: Config, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    tengine_core::health::spawn_probes(config.projector.health_listen, &config, "projector").await?;
    let projector = tengine_projector::Projector::connect(config).await?;
    projector.run(wait_for(stop)).await
}

/// A value placed in a URL path segment.
fn seg(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn print(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

fn read_json(path: &PathBuf) -> anyhow::Result<Value> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

fn client(admin: &AdminArgs) -> anyhow::Result<AdminClient> {
    AdminClient::new(&admin.admin_url, &admin.admin_token)
}

async fn usage_export(args: ExportArgs) -> anyhow::Result<()> {
    let config = Config::load()?;
    let exporter = export::Exporter::connect(&config).await?;
    if args.schedule {
        let dir = args.dir.context("--schedule needs --dir")?;
        let throttle = std::time::Duration::from_millis(args.throttle_ms);
        let stop = shutdown_channel();
        loop {
            let written = export::export_closed_hours(&exporter, &dir, throttle).await?;
            eprintln!("exported {written} hour file(s) to {}", dir.display());
            if args.once {
                return Ok(());
            }
            let mut stop = stop.clone();
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return Ok(()),
                _ = tokio::time::sleep(std::time::Duration::from_secs(args.interval_secs.max(1))) => {}
            }
        }
    }
    let project = args.project.context("--project is required")?;
    let request = export::Request {
        project,
        kind: if args.runs {
            export::Kind::Runs
        } else {
            export::Kind::Usage
        },
        format: args.format,
        from: args.from.unwrap_or(chrono::DateTime::<chrono::Utc>::UNIX_EPOCH),
        to: args.to.unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC),
        cursor: args.cursor.clone(),
        limit: args.limit,
    };
    let closed = exporter.closed_until().await?;
    let summary = match &args.output {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(args.cursor.is_some())
                .truncate(args.cursor.is_none())
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            let mut out = std::io::BufWriter::new(file);
            let cursor_file = PathBuf::from(format!("{}.cursor", path.display()));
            let summary = export::export(&exporter, &request, closed, &mut out, |cursor| {
                export::write_atomically(&cursor_file, &format!("{cursor}\n"))
            })
            .await?;
            out.into_inner()
                .map_err(|e| anyhow::anyhow!("writing {}: {}", path.display(), e.error()))?
                .sync_all()?;
            summary
        }
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            export::export(&exporter, &request, closed, &mut out, |_| Ok(())).await?
        }
    };
    eprintln!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// `tengine projector dead-letters [--reapply ID]`.
async fn dead_letters(config: &Config, reapply: Option<i64>) -> anyhow::Result<()> {
    use tengine_projector::dead_letters;
    let pool = tengine_core::connections::connect_postgres(&config.database_url, 2).await?;
    if config.run_migrations {
        tengine_core::connections::migrate(&pool).await?;
    }
    if let Some(id) = reapply {
        let letter = dead_letters::reapply(&pool, config.projector.usage_close_after_secs, id).await?;
        println!(
            "re-applied dead letter #{} (event log #{}, run {})",
            letter.id,
            letter.stream_seq,
            letter.run_id.map_or_else(|| "-".to_string(), |r| r.to_string())
        );
        return Ok(());
    }
    let letters = dead_letters::list(&pool).await?;
    if letters.is_empty() {
        println!("no dead letters");
        return Ok(());
    }
    let id = |value: Option<uuid::Uuid>| value.map_or_else(|| "-".to_string(), |v| v.to_string());
    let time = |at: chrono::DateTime<chrono::Utc>| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let rows: Vec<[String; 7]> = letters
        .iter()
        .map(|l| {
            [
                l.id.to_string(),
                l.stream_seq.to_string(),
                id(l.run_id),
                id(l.project_id),
                time(l.created_at),
                l.reapplied_at.map_or_else(|| "-".to_string(), time),
                // One line per letter, whatever the error says.
                l.error.chars().map(|c| if c.is_control() { ' ' } else { c }).collect(),
            ]
        })
        .collect();
    let header = ["ID", "SEQ", "RUN", "PROJECT", "CREATED", "REAPPLIED", "ERROR"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    if let Err(err) = run(Cli::parse()).await {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Healthcheck { url, timeout_ms } => {
            std::process::exit(healthcheck::run(&url, std::time::Duration::from_millis(timeout_ms)).await)
        }
        Command::Projector {
            command: Some(ProjectorCommand::Rebuild),
        } => {
            let config = Config::load()?;
            let _telemetry = telemetry::init(config.log_format, &config.otlp_endpoint, "tengine-rebuild");
            let rebuilt = tengine_projector::rebuild::rebuild(&config).await?;
            print(&json!(rebuilt));
            Ok(())
        }
        Command::Projector {
            command: Some(ProjectorCommand::DeadLetters { reapply }),
        } => {
            let config = Config::load()?;
            let _telemetry = telemetry::init(config.log_format, &config.otlp_endpoint, "tengine-dead-letters");
            dead_letters(&config, reapply).await
        }
        Command::Ingress | Command::Worker | Command::Projector { .. } | Command::Dev | Command::Migrate => {
            let config = Config::load()?;
            let service = match cli.command {
                Command::Ingress => "tengine-ingress",
                Command::Worker => "tengine-worker",
                Command::Projector { .. } => "tengine-projector",
                _ => "tengine",
            };
            // Kept until the end of `run`: flushes exported spans on the way out.
            let _telemetry = telemetry::init(config.log_format, &config.otlp_endpoint, service);
            let stop = shutdown_channel();
            match cli.command {
                Command::Ingress => run_ingress(config, stop).await,
                Command::Worker => run_worker(config, stop).await,
                Command::Projector { .. } => run_projector(config, stop).await,
                Command::Migrate => {
                    let pool = tengine_core::connections::connect_postgres(&config.database_url, 2).await?;
                    tengine_core::connections::migrate(&pool).await?;
                    println!("migrations applied");
                    Ok(())
                }
                _ => {
                    let (a, b, c) = tokio::join!(
                        run_ingress(config.clone(), stop.clone()),
                        run_worker(config.clone(), stop.clone()),
                        run_projector(config, stop),
                    );
                    a.and(b).and(c)
                }
            }
        }
        Command::Usage {
            command: UsageCommand::Export(args),
        } => usage_export(args).await,
        Command::Secrets {
            command: SecretsCommand::Reseal,
        } => {
            let config = Config::load()?;
            let pool = tengine_core::connections::connect_postgres(&config.database_url, 2).await?;
            let count = tengine_control::tools::reseal_secrets(&pool, &config.secret_box()?).await?;
            println!("re-encrypted the secrets of {count} tool(s) under the current master key");
            Ok(())
        }
        Command::DemoUpstream { listen } => {
            let config = Config::load()?;
            let _telemetry = telemetry::init(config.log_format, &config.otlp_endpoint, "tengine-demo-upstream");
            demo::serve_upstream(listen, demo::demo_secret(&config.master_key_bytes()?)).await
        }
        Command::Demo {
            command:
                DemoCommand::Seed {
                    admin,
                    upstream_url,
                    env_file,
                },
        } => {
            let config = Config::load()?;
            let secret = demo::demo_secret(&config.master_key_bytes()?);
            demo::seed(&client(&admin)?, &upstream_url, &secret, &env_file).await
        }
        Command::Projects { admin, command } => {
            let c = client(&admin)?;
            match command {
                ProjectCommand::Create { name } => print(&c.post("/v1/projects", &json!({"name": name})).await?),
                ProjectCommand::List => print(&c.get("/v1/projects").await?),
                ProjectCommand::Allowlist { project, networks } => print(
                    &c.patch(
                        &format!("/v1/projects/{project}"),
                        &json!({"outbound_allowlist": networks}),
                    )
                    .await?,
                ),
                ProjectCommand::Quota {
                    project,
                    monthly_calls,
                    member_calls_per_minute,
                } => {
                    let mut body = json!({});
                    if let Some(raw) = monthly_calls {
                        body["monthly_call_limit"] = limit_arg("monthly-calls", &raw)?;
                    }
                    if let Some(raw) = member_calls_per_minute {
                        body["member_calls_per_minute"] = limit_arg("member-calls-per-minute", &raw)?;
                    }
                    print(&c.patch(&format!("/v1/projects/{}", seg(&project)), &body).await?)
                }
                ProjectCommand::Bodies {
                    project,
                    store,
                    max_bytes,
                    redact,
                    no_redact,
                } => {
                    let mut body = json!({});
                    if let Some(store) = store {
                        body["store_bodies"] = json!(store);
                    }
                    if let Some(max) = max_bytes {
                        body["body_max_bytes"] = json!(max);
                    }
                    if !redact.is_empty() || no_redact {
                        body["redact_fields"] = json!(redact);
                    }
                    print(&c.patch(&format!("/v1/projects/{}", seg(&project)), &body).await?)
                }
            }
            Ok(())
        }
        Command::Keys { admin, command } => {
            let c = client(&admin)?;
            match command {
                KeyCommand::Create { project, name, scopes } => print(
                    &c.post(
                        &format!("/v1/projects/{project}/api-keys"),
                        &json!({"name": name, "scopes": scopes}),
                    )
                    .await?,
                ),
                KeyCommand::List { project } => print(&c.get(&format!("/v1/projects/{project}/api-keys")).await?),
                KeyCommand::Revoke { project, key_id } => {
                    c.delete(&format!("/v1/projects/{project}/api-keys/{key_id}")).await?;
                    println!("revoked {key_id}");
                }
            }
            Ok(())
        }
        Command::Tools { admin, command } => {
            let c = client(&admin)?;
            match command {
                ToolCommand::Create { project, file } => print(
                    &c.post(&format!("/v1/projects/{project}/tools"), &read_json(&file)?)
                        .await?,
                ),
                ToolCommand::Update { project, name, file } => print(
                    &c.put(&format!("/v1/projects/{project}/tools/{name}"), &read_json(&file)?)
                        .await?,
                ),
                ToolCommand::List { project } => print(&c.get(&format!("/v1/projects/{project}/tools")).await?),
                ToolCommand::Get { project, name } => {
                    print(&c.get(&format!("/v1/projects/{project}/tools/{name}")).await?)
                }
                ToolCommand::Enable { project, name } => print(
                    &c.patch(
                        &format!("/v1/projects/{project}/tools/{name}"),
                        &json!({"enabled": true}),
                    )
                    .await?,
                ),
                ToolCommand::Disable { project, name } => print(
                    &c.patch(
                        &format!("/v1/projects/{project}/tools/{name}"),
                        &json!({"enabled": false}),
                    )
                    .await?,
                ),
                ToolCommand::Delete { project, name } => {
                    c.delete(&format!("/v1/projects/{project}/tools/{name}")).await?;
                    println!("deleted {name}");
                }
                ToolCommand::Import {
                    project,
                    document,
                    tag,
                    path_prefix,
                    method,
                    operation_id,
                    name_prefix,
                    base_url,
                    apply,
                    enable,
                    json,
                } => {
                    let mut query: Vec<(&str, String)> =
                        vec![("dry_run", (!apply).to_string()), ("enable", enable.to_string())];
                    query.extend(tag.into_iter().map(|t| ("tag", t)));
                    query.extend(method.into_iter().map(|m| ("method", m)));
                    query.extend(operation_id.into_iter().map(|o| ("operation_id", o)));
                    query.extend(path_prefix.map(|p| ("path_prefix", p)));
                    query.extend(name_prefix.map(|p| ("name_prefix", p)));
                    query.extend(base_url.map(|b| ("base_url", b)));
                    let (body, content_type) = if document.starts_with("https://") || document.starts_with("http://") {
                        query.push(("url", document));
                        (Vec::new(), "application/json")
                    } else {
                        let bytes = if document == "-" {
                            let mut buf = Vec::new();
                            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                            buf
                        } else {
                            std::fs::read(&document).with_context(|| format!("reading {document}"))?
                        };
                        let json_like = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
                        (
                            bytes,
                            if json_like {
                                "application/json"
                            } else {
                                "application/yaml"
                            },
                        )
                    };
                    let report = c
                        .post_document(
                            &format!("/v1/projects/{project}/tools/import"),
                            &query,
                            body,
                            content_type,
                        )
                        .await?;
                    if json {
                        print(&report);
                    } else {
                        print!("{}", import_table(&report));
                    }
                }
                ToolCommand::Render {
                    project,
                    name,
                    args,
                    member,
                } => {
                    let mut body =
                        json!({"arguments": serde_json::from_str::<Value>(&args).context("--args is not JSON")?});
                    if let Some(member) = member {
                        body["member"] = serde_json::from_str(&member).context("--member is not JSON")?;
                    }
                    print(
                        &c.post(&format!("/v1/projects/{project}/tools/{name}/render"), &body)
                            .await?,
                    )
                }
            }
            Ok(())
        }
        Command::Integrations { admin, command } => {
            let c = client(&admin)?;
            match command {
                IntegrationCommand::Create {
                    project,
                    name,
                    allow_tools,
                } => {
                    let mut body = json!({"name": name});
                    if !allow_tools.is_empty() {
                        body["allowed_tools"] = json!(allow_tools);
                    }
                    print(&c.post(&format!("/v1/projects/{project}/integrations"), &body).await?)
                }
                IntegrationCommand::List { project } => {
                    print(&c.get(&format!("/v1/projects/{project}/integrations")).await?)
                }
                IntegrationCommand::Get {
                    project,
                    integration_id,
                } => print(
                    &c.get(&format!("/v1/projects/{project}/integrations/{integration_id}"))
                        .await?,
                ),
                IntegrationCommand::Delete {
                    project,
                    integration_id,
                } => {
                    c.delete(&format!("/v1/projects/{project}/integrations/{integration_id}"))
                        .await?;
                    println!("deleted {integration_id}");
                }
                IntegrationCommand::Key {
                    project,
                    integration_id,
                    name,
                } => print(
                    &c.post(
                        &format!("/v1/projects/{project}/integrations/{integration_id}/api-keys"),
                        &json!({"name": name}),
                    )
                    .await?,
                ),
            }
            Ok(())
        }
        Command::MemberKeys { admin, command } => {
            let c = client(&admin)?;
            match command {
                MemberKeyCommand::Add {
                    project,
                    kid,
                    public_key_file,
                } => {
                    let pem = std::fs::read_to_string(&public_key_file)
                        .with_context(|| format!("reading {}", public_key_file.display()))?;
                    print(
                        &c.post(
                            &format!("/v1/projects/{project}/member-keys"),
                            &json!({"kid": kid, "public_key": pem}),
                        )
                        .await?,
                    )
                }
                MemberKeyCommand::List { project } => {
                    print(&c.get(&format!("/v1/projects/{project}/member-keys")).await?)
                }
                MemberKeyCommand::Delete { project, kid } => {
                    c.delete(&format!("/v1/projects/{project}/member-keys/{}", seg(&kid)))
                        .await?;
                    println!("deleted {kid}");
                }
            }
            Ok(())
        }
        Command::Members {
            admin,
            command: MemberCommand::RevokeSessions { project, member_id },
        } => {
            client(&admin)?
                .post(
                    &format!("/v1/projects/{project}/members/{}/revoke-sessions", seg(&member_id)),
                    &json!({}),
                )
                .await?;
            println!("revoked every session of member {member_id}");
            Ok(())
        }
        Command::Runs { admin, command } => {
            let c = client(&admin)?;
            match command {
                RunCommand::List {
                    project,
                    status,
                    tool,
                    limit,
                } => {
                    let mut path = format!("/v1/projects/{project}/runs?limit={limit}");
                    if let Some(s) = status {
                        path.push_str(&format!("&status={s}"));
                    }
                    if let Some(t) = tool {
                        path.push_str(&format!("&tool={t}"));
                    }
                    print(&c.get(&path).await?)
                }
                RunCommand::Get { run_id } => print(&c.get(&format!("/v1/runs/{run_id}")).await?),
                RunCommand::Redrive {
                    project,
                    run_id,
                    idempotency_key,
                } => print(
                    &c.post_keyed(
                        &format!("/v1/projects/{project}/runs/{run_id}/redrive"),
                        idempotency_key.as_deref(),
                    )
                    .await?,
                ),
            }
            Ok(())
        }
        Command::Approvals { admin, command } => {
            let c = client(&admin)?;
            let answer = match command {
                ApprovalCommand::List { project } => c.get(&format!("/v1/projects/{project}/approvals")).await?,
                ApprovalCommand::Approve { run_id, note } => {
                    c.post(
                        &format!("/v1/runs/{run_id}/approve"),
                        &serde_json::json!({ "note": note }),
                    )
                    .await?
                }
                ApprovalCommand::Reject { run_id, reason } => {
                    c.post(
                        &format!("/v1/runs/{run_id}/reject"),
                        &serde_json::json!({ "reason": reason }),
                    )
                    .await?
                }
            };
            print(&answer);
            Ok(())
        }
        Command::Oauth { admin, command } => {
            let c = client(&admin)?;
            let answer = match command {
                OAuthCommand::Clients { project } => c.get(&format!("/v1/projects/{project}/oauth/clients")).await?,
                OAuthCommand::Grants { project } => c.get(&format!("/v1/projects/{project}/oauth/grants")).await?,
                OAuthCommand::Events { project } => c.get(&format!("/v1/projects/{project}/oauth/events")).await?,
                OAuthCommand::Revoke { project, grant_id } => {
                    c.delete(&format!("/v1/projects/{project}/oauth/grants/{grant_id}"))
                        .await?
                }
            };
            print(&answer);
            Ok(())
        }
    }
}

/// An import report as a table: one line per operation, then the counts.
fn import_table(report: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let mut rows = vec![[
        "ACTION".to_string(),
        "TOOL".into(),
        "METHOD".into(),
        "PATH".into(),
        "DETAIL".into(),
    ]];
    for op in report["operations"].as_array().into_iter().flatten() {
        let detail = match op["action"].as_str() {
            Some("skipped" | "failed") => text(&op["reason"]),
            Some("update") => format!(
                "changes: {}",
                op["changes"]
                    .as_object()
                    .map(|c| c.keys().cloned().collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            ),
            _ => op["notes"]
                .as_array()
                .map(|n| n.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "))
                .unwrap_or_default(),
        };
        rows.push([
            text(&op["action"]),
            text(&op["tool"]),
            text(&op["method"]),
            text(&op["path"]),
            detail,
        ]);
    }
    let mut widths = [0usize; 4];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row.iter()) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        for (width, cell) in widths.iter().zip(row.iter()) {
            out.push_str(&format!("{cell:<width$}  "));
        }
        out.push_str(&row[4]);
        out.push('\n');
    }
    let counts = &report["counts"];
    out.push_str(&format!(
        "{} {}: {} create, {} update, {} unchanged, {} skipped, {} failed{}\n",
        text(&report["title"]),
        text(&report["openapi"]),
        counts["create"],
        counts["update"],
        counts["unchanged"],
        counts["skipped"],
        counts["failed"],
        if report["dry_run"] == Value::Bool(true) {
            " (dry run: nothing written; pass --apply)"
        } else {
            ""
        }
    ));
    out
}
