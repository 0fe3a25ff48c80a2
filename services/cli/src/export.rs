//! `tengine usage export`: billing export of closed hours, read from run history
//! through [`tengine_projector::history::export`] (which owns the queries).
//!
//! Rows are streamed page by page with keyset pagination, never the whole
//! result in memory; after each page the resume cursor is known (and, with
//! `--output`, saved next to the file). Only closed hours are exported (see
//! `tengine_projector::closing`): an exported hour never changes afterwards.
//!
//! `--schedule --dir DIR` writes each closed hour with usage of each project to
//! `DIR/<project id>/<YYYY-MM-DDTHH>.jsonl` exactly once: the file is written
//! under a temporary name, fsynced, renamed into place and the directory fsynced,
//! so it either exists complete or not at all; an existing file is never
//! rewritten. `DIR/<project id>/.exported-until` records how far a project is
//! done, so a restart only looks at newer hours; a killed exporter leaves at most
//! a temporary file, removed on the next pass.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde_json::Value;
use sqlx::PgPool;
use tengine_core::{Config, Topology};
pub use tengine_projector::history::export::Kind;
use tengine_projector::history::export::{Pages, hours_with_usage};
use uuid::Uuid;

/// Rows per page (one query each).
const PAGE_ROWS: i64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Jsonl,
}

pub struct Exporter {
    pool: PgPool,
    events: async_nats::jetstream::stream::Stream,
    topology: Topology,
    close_after: Duration,
}

impl Exporter {
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let pool = tengine_core::connections::connect_postgres(&config.database_url, 2).await?;
        let nats = tengine_core::topology::connect_nats(&config.nats_url, "tengine-export").await?;
        let topology = Topology::from_config(config);
        let events = async_nats::jetstream::new(nats)
            .get_stream(topology.events_stream())
            .await
            .map_err(|e| anyhow::anyhow!("opening the event log {}: {e}", topology.events_stream()))?;
        Ok(Self {
            pool,
            events,
            topology,
            close_after: Duration::from_secs(config.projector.usage_close_after_secs),
        })
    }

    /// Every hour ending at or before this is closed.
    pub async fn closed_until(&self) -> anyhow::Result<DateTime<Utc>> {
        tengine_projector::closing::closed_until(
            &self.events,
            &self.topology.projector_consumer(),
            &self.topology.events_wildcard(),
            self.close_after,
        )
        .await
    }
}

/// A row's keyset position, opaque to users (base64url of JSON).
fn encode_cursor(key: &Value) -> String {
    URL_SAFE_NO_PAD.encode(key.to_string())
}

fn decode_cursor(cursor: &str, kind: Kind) -> anyhow::Result<Value> {
    let bad = || anyhow::anyhow!("--cursor is not a cursor printed by an earlier `tengine usage export` of this kind");
    let bytes = URL_SAFE_NO_PAD.decode(cursor.trim()).map_err(|_| bad())?;
    let key: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if key.as_array().map(Vec::len) != Some(kind.key_len()) {
        return Err(bad());
    }
    Ok(key)
}

fn csv_field(value: &Value) -> String {
    let text = match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        // Latency buckets: one field, `;`-separated.
        Value::Array(items) => items.iter().map(Value::to_string).collect::<Vec<_>>().join(";"),
        other => other.to_string(),
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

fn write_row(
    out: &mut dyn Write,
    kind: Kind,
    format: Format,
    row: &serde_json::Map<String, Value>,
) -> std::io::Result<()> {
    match format {
        Format::Jsonl => writeln!(out, "{}", Value::Object(row.clone())),
        Format::Csv => {
            let fields: Vec<String> = kind
                .columns()
                .iter()
                .map(|c| csv_field(row.get(*c).unwrap_or(&Value::Null)))
                .collect();
            writeln!(out, "{}", fields.join(","))
        }
    }
}

pub struct Request {
    pub project: Uuid,
    pub kind: Kind,
    pub format: Format,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub cursor: Option<String>,
    /// Stop after this many rows (a chunk; resume with the printed cursor).
    pub limit: Option<u64>,
}

#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub rows: u64,
    /// The position after the last row exported (or the cursor given): pass it as
    /// `--cursor` to continue, now (when not `complete`) or once more hours closed.
    pub cursor: Option<String>,
    /// Whether every row up to `exported_to` was exported (false after `--limit`).
    pub complete: bool,
    /// The end of the range exported: `--to`, or the end of the closed hours if earlier.
    pub exported_to: DateTime<Utc>,
}

/// Streams the requested rows before `closed` (the end of the closed hours) to
/// `out`; `on_page` is called with the cursor after each page is written.
pub async fn export(
    exporter: &Exporter,
    request: &Request,
    closed: DateTime<Utc>,
    out: &mut dyn Write,
    mut on_page: impl FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<Summary> {
    let to = request.to.min(closed);
    let mut after = match &request.cursor {
        Some(cursor) => Some(decode_cursor(cursor, request.kind)?),
        None => None,
    };
    if after.is_none() && request.format == Format::Csv {
        writeln!(out, "{}", request.kind.columns().join(","))?;
    }
    let pages = Pages::new(request.kind);
    let mut rows = 0u64;
    loop {
        let page = match request.limit {
            Some(limit) => PAGE_ROWS.min(i64::try_from(limit.saturating_sub(rows)).unwrap_or(PAGE_ROWS)),
            None => PAGE_ROWS,
        };
        if page == 0 {
            break;
        }
        let mut stream = pages.page(&exporter.pool, request.project, request.from, to, after.as_ref(), page)?;
        let mut in_page = 0i64;
        while let Some((object, key)) = stream.try_next().await? {
            write_row(out, request.kind, request.format, &object)?;
            after = Some(key);
            in_page += 1;
        }
        drop(stream);
        rows += in_page as u64;
        out.flush()?;
        if let Some(key) = &after {
            on_page(&encode_cursor(key))?;
        }
        if in_page < page {
            // The range is exhausted.
            return Ok(Summary {
                rows,
                cursor: after.as_ref().map(encode_cursor),
                complete: true,
                exported_to: to,
            });
        }
    }
    Ok(Summary {
        rows,
        cursor: after.as_ref().map(encode_cursor),
        complete: false,
        exported_to: to,
    })
}

/// The temporary name a file is written under before it is renamed into place.
fn temporary(path: &Path) -> anyhow::Result<PathBuf> {
    let dir = path.parent().context("the file has no directory")?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("the file name is not UTF-8")?;
    Ok(dir.join(format!(".{name}.tmp")))
}

/// Makes a fully written temporary file `path`: fsync, rename, fsync of the directory.
fn commit(temp: &Path, file: std::fs::File, path: &Path) -> anyhow::Result<()> {
    file.sync_all().with_context(|| format!("syncing {}", temp.display()))?;
    drop(file);
    std::fs::rename(temp, path).with_context(|| format!("renaming {} into place", temp.display()))?;
    let dir = path.parent().context("the file has no directory")?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing the directory {}", dir.display()))
}

/// Writes a small file atomically (temporary file, fsync, rename).
pub fn write_atomically(path: &Path, contents: &str) -> anyhow::Result<()> {
    let temp = temporary(path)?;
    let mut file = std::fs::File::create(&temp).with_context(|| format!("creating {}", temp.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", temp.display()))?;
    commit(&temp, file, path)
}

/// The file name of an hour: `2026-11-24T13.jsonl` (UTC).
pub fn hour_file(hour: DateTime<Utc>) -> String {
    format!("{}.jsonl", hour.format("%Y-%m-%dT%H"))
}

const STATE_FILE: &str = ".exported-until";

/// One pass of the scheduled export: every closed hour with usage of every
/// project not exported yet. Returns how many hour files were written.
pub async fn export_closed_hours(exporter: &Exporter, dir: &Path, throttle: Duration) -> anyhow::Result<u64> {
    let closed = exporter.closed_until().await?;
    let projects = tengine_control::projects::ids(&exporter.pool).await?;
    let mut written = 0;
    for project in projects {
        let project_dir = dir.join(project.to_string());
        std::fs::create_dir_all(&project_dir).with_context(|| format!("creating {}", project_dir.display()))?;
        remove_temporaries(&project_dir)?;
        let state = project_dir.join(STATE_FILE);
        let since = match std::fs::read_to_string(&state) {
            Ok(text) => DateTime::parse_from_rfc3339(text.trim())
                .with_context(|| format!("{} is not an RFC 3339 time; delete it to rescan", state.display()))?
                .with_timezone(&Utc),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => DateTime::<Utc>::UNIX_EPOCH,
            Err(err) => return Err(err).with_context(|| format!("reading {}", state.display())),
        };
        let hours = hours_with_usage(&exporter.pool, project, since, closed).await?;
        for hour in hours {
            let path = project_dir.join(hour_file(hour));
            if path.exists() {
                continue;
            }
            let request = Request {
                project,
                kind: Kind::Usage,
                format: Format::Jsonl,
                from: hour,
                to: hour + chrono::Duration::hours(1),
                cursor: None,
                limit: None,
            };
            // Streamed into a temporary file, never held in memory.
            let temp = temporary(&path)?;
            let file = std::fs::File::create(&temp).with_context(|| format!("creating {}", temp.display()))?;
            let mut writer = std::io::BufWriter::new(file);
            export(exporter, &request, closed, &mut writer, |_| Ok(())).await?;
            let file = writer
                .into_inner()
                .map_err(|e| anyhow::anyhow!("writing {}: {}", temp.display(), e.error()))?;
            commit(&temp, file, &path)?;
            written += 1;
            tokio::time::sleep(throttle).await;
        }
        write_atomically(&state, &format!("{}\n", closed.to_rfc3339()))?;
    }
    Ok(written)
}

fn remove_temporaries(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path: PathBuf = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with('.') && name.ends_with(".tmp") {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}
