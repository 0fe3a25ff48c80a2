//! One typed configuration tree, layered like svix: built-in defaults
//! (`config.default.toml`), then an optional file (`TENGINE_CONFIG`), then
//! `TENGINE_`-prefixed environment variables (`__` separates nested keys), then
//! the secrets named by `TENGINE_<KEY>_FILE` (mounted Secrets, systemd credentials).

use std::{net::SocketAddr, str::FromStr};

use base64::Engine;
use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use serde::Deserialize;

const DEFAULTS: &str = include_str!("../config.default.toml");

/// The settings that may hold a secret (a password in a URL, a token, a key): each is
/// also read from the file named by `TENGINE_<KEY>_FILE`, so that it never has to be
/// in the environment or a config file. Setting both is refused (which one wins would
/// be a guess).
pub const FILE_SECRETS: &[&str] = &[
    "database_url",
    "nats_url",
    "admin_token",
    "master_key",
    "previous_master_keys",
    "session_secret",
];

#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    pub database_url: String,
    pub nats_url: String,
    pub nats_prefix: String,
    pub admin_token: String,
    pub master_key: String,
    pub previous_master_keys: Vec<String>,
    pub session_secret: String,
    pub allow_insecure_upstreams: bool,
    pub allow_private_upstreams: bool,
    pub run_migrations: bool,
    pub log_format: LogFormat,
    /// OTLP/HTTP collector base URL (`http://127.0.0.1:4318`); empty: traces are not exported.
    pub otlp_endpoint: String,
    pub ingress: IngressConfig,
    pub worker: WorkerConfig,
    pub projector: ProjectorConfig,
    pub streams: StreamsConfig,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
pub struct IngressConfig {
    pub listen: SocketAddr,
    /// Operators' listener: `/metrics` and `/health` (loopback by default).
    pub metrics_listen: SocketAddr,
    /// PostgreSQL connections of one ingress process.
    pub database_pool_size: u32,
    pub public_url: String,
    pub max_request_bytes: usize,
    pub max_call_wait_ms: u64,
    pub call_wait_slack_ms: u64,
    pub tools_page_size: usize,
    pub session_ttl_secs: u64,
    pub member_session_ttl_secs: u64,
    pub idempotency_ttl_secs: u64,
    /// How long a call holds its idempotency claim without renewing it (see the
    /// ingress's `idempotency` module); a retry never takes a claim over before.
    pub idempotency_lease_ms: u64,
    /// Per-session states (ended sessions, log levels) one ingress holds at most.
    pub max_session_states: usize,
    /// Session writes (DELETE, logging/setLevel) one API key may make per second (burst: twice that).
    pub session_writes_per_second: u32,
    /// Open GET streams (and resumed call streams) per API key on one ingress.
    pub max_streams_per_key: usize,
    /// A call to a tool with `task_support: optional` becomes a task (for clients
    /// that declared the tasks extension) when its `timeout_ms` is longer than this.
    pub task_after_ms: u64,
    /// How long a call that becomes a task waits for its API to ask for input
    /// (answered as a multi round-trip result instead of a task); 0: never.
    pub task_input_window_ms: u64,
    /// How long a call may wait for an operator's approval before it is refused.
    pub approval_ttl_secs: u64,
    /// How long a user has to confirm a call to a tool with `approval: client`.
    pub input_ttl_secs: u64,
    pub allowed_origins: Vec<String>,
    pub allowed_hosts: Vec<String>,
    /// A PEM root certificate trusted, besides the public roots, for fetching OAuth
    /// client metadata documents; empty: none.
    pub oauth_metadata_ca_file: String,
}

impl IngressConfig {
    /// How long an idempotency key maps to its run.
    pub fn idempotency_ttl(&self) -> chrono::Duration {
        chrono::Duration::seconds(i64::try_from(self.idempotency_ttl_secs).unwrap_or(i64::MAX))
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct WorkerConfig {
    pub health_listen: SocketAddr,
    /// PostgreSQL connections of one worker process.
    pub database_pool_size: u32,
    pub concurrency: usize,
    pub max_response_bytes: usize,
    pub connect_timeout_ms: u64,
    pub ack_wait_secs: u64,
    pub max_deliver: i64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ProjectorConfig {
    pub health_listen: SocketAddr,
    /// PostgreSQL connections of the projector.
    pub database_pool_size: u32,
    pub batch_size: usize,
    /// How long the projector gathers events for one transaction once the first
    /// is in (less when `batch_size` are in sooner). See `batch_wait`.
    pub batch_wait_ms: u64,
    /// How long after its end an hour of usage is closed (exportable, never to
    /// change again); must exceed the longest a run can take. A run finishing later
    /// than this after its accepted hour is counted in the hour it finished.
    pub usage_close_after_secs: u64,
    /// Days of run history (runs, attempts, applied-event ids) kept; whole days
    /// are dropped after that. 0 keeps everything. Must exceed the event log's
    /// age by a day (see `validate`). Usage aggregates are never dropped.
    pub history_retention_days: u32,
}

impl ProjectorConfig {
    pub fn batch_wait(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.batch_wait_ms)
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct StreamsConfig {
    /// Size limits of the KV buckets (JetStream reserves them at creation).
    pub sessions_max_bytes: i64,
    pub idempotency_max_bytes: i64,
    pub cancelled_max_bytes: i64,
    pub approvals_max_bytes: i64,
    pub tasks_max_bytes: i64,
    pub commands_max_bytes: i64,
    pub commands_max_msgs: i64,
    pub events_max_age_secs: u64,
    pub events_max_bytes: i64,
    pub duplicate_window_secs: u64,
    /// JetStream replicas of every stream and KV bucket (3 on a 3-node cluster).
    pub replicas: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Parse(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads defaults, then `TENGINE_CONFIG` (a TOML file) if set, then the environment.
    pub fn load() -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Ok(path) = std::env::var("TENGINE_CONFIG") {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Env::prefixed("TENGINE_").split("__").ignore(&["config"]));
        for (key, value) in secrets_from_files(std::env::vars())? {
            figment = figment.merge((key, parse_value(&value)));
        }
        Self::from_figment(figment)
    }

    /// Defaults plus the given overrides, ignoring the environment (tests).
    pub fn with_overrides(overrides: &[(&str, String)]) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        for (key, value) in overrides {
            figment = figment.merge((*key, parse_value(value)));
        }
        Self::from_figment(figment)
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.nats_prefix.is_empty()
            || !self
                .nats_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ConfigError::Invalid(
                "nats_prefix must be non-empty and use only [A-Za-z0-9_-]".into(),
            ));
        }
        // The projector forgets which events it applied when their day is dropped:
        // an event still in the log after that could be applied twice (a
        // redelivery) or bring a dropped day back (a rebuild). So history must
        // outlive the log, by a day for the day-granular drop and publish delays.
        let retention_secs = u64::from(self.projector.history_retention_days) * 86_400;
        if self.projector.history_retention_days > 0
            && (self.streams.events_max_age_secs == 0
                || retention_secs < self.streams.events_max_age_secs.saturating_add(86_400))
        {
            return Err(ConfigError::Invalid(format!(
                "projector.history_retention_days ({} days) must exceed streams.events_max_age_secs ({} s{}) by at \
                 least a day, or be 0 (keep history forever)",
                self.projector.history_retention_days,
                self.streams.events_max_age_secs,
                if self.streams.events_max_age_secs == 0 {
                    ": unlimited"
                } else {
                    ""
                }
            )));
        }
        // A retry finds out whether its key's run exists from the queue, the event
        // log and history; the log must keep a run's events as long as its key lives
        // (history outlives the log, see above).
        if self.streams.events_max_age_secs != 0 && self.streams.events_max_age_secs < self.ingress.idempotency_ttl_secs
        {
            return Err(ConfigError::Invalid(format!(
                "streams.events_max_age_secs ({} s) must be at least ingress.idempotency_ttl_secs ({} s), or 0: a \
                 retry must find its key's run in the event log or in history",
                self.streams.events_max_age_secs, self.ingress.idempotency_ttl_secs
            )));
        }
        // Events wait that long unacked; the consumer's ack_wait is 10 s.
        if self.projector.batch_wait_ms > 1_000 {
            return Err(ConfigError::Invalid(format!(
                "projector.batch_wait_ms ({}) must be at most 1000",
                self.projector.batch_wait_ms
            )));
        }
        if !(1_000..=600_000).contains(&self.ingress.idempotency_lease_ms) {
            return Err(ConfigError::Invalid(format!(
                "ingress.idempotency_lease_ms ({}) must be between 1000 and 600000",
                self.ingress.idempotency_lease_ms
            )));
        }
        if self.ingress.session_writes_per_second == 0 || self.ingress.max_streams_per_key == 0 {
            return Err(ConfigError::Invalid(
                "ingress.session_writes_per_second and ingress.max_streams_per_key must be at least 1".into(),
            ));
        }
        if self.worker.concurrency == 0 {
            return Err(ConfigError::Invalid("worker.concurrency must be at least 1".into()));
        }
        // A confirmation's spent nonce is kept with the idempotency keys: it must
        // outlive the confirmation, or a replay after it was forgotten would run again.
        if self.ingress.input_ttl_secs == 0 || self.ingress.input_ttl_secs >= self.ingress.idempotency_ttl_secs {
            return Err(ConfigError::Invalid(format!(
                "ingress.input_ttl_secs ({} s) must be at least 1 and less than ingress.idempotency_ttl_secs ({} s)",
                self.ingress.input_ttl_secs, self.ingress.idempotency_ttl_secs
            )));
        }
        Ok(())
    }

    /// The master key for secrets at rest; required by services that touch secrets.
    pub fn master_key_bytes(&self) -> Result<[u8; 32], ConfigError> {
        decode_key32("master_key", &self.master_key)
    }

    /// The cipher for tool secrets: the master key, plus previous ones during a rotation.
    pub fn secret_box(&self) -> Result<crate::secrets::SecretBox, ConfigError> {
        let previous = self
            .previous_master_keys
            .iter()
            .map(|k| decode_key32("previous_master_keys", k))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(crate::secrets::SecretBox::with_previous(
            &self.master_key_bytes()?,
            &previous,
        ))
    }

    /// The key that signs MCP session ids; required by the ingress.
    pub fn session_secret_bytes(&self) -> Result<[u8; 32], ConfigError> {
        decode_key32("session_secret", &self.session_secret)
    }
}

/// Parsed like environment values: "true" is a bool, "5" a number, `["a"]` a list.
fn parse_value(value: &str) -> figment::value::Value {
    figment::value::Value::from_str(value).unwrap_or_else(|_| value.into())
}

/// The `FILE_SECRETS` given as files among `vars` (the environment): each file's
/// content without its trailing line break.
fn secrets_from_files(
    vars: impl Iterator<Item = (String, String)>,
) -> Result<Vec<(&'static str, String)>, ConfigError> {
    let vars: std::collections::HashMap<String, String> = vars.collect();
    let mut secrets = Vec::new();
    for key in FILE_SECRETS {
        let direct = format!("TENGINE_{}", key.to_uppercase());
        let file_var = format!("{direct}_FILE");
        let Some(path) = vars.get(&file_var) else {
            continue;
        };
        if vars.contains_key(&direct) {
            return Err(ConfigError::Invalid(format!("set {direct} or {file_var}, not both")));
        }
        let value = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Invalid(format!("{file_var}: reading {path}: {e}")))?;
        secrets.push((*key, value.trim_end_matches(['\n', '\r']).to_owned()));
    }
    Ok(secrets)
}

fn decode_key32(name: &str, value: &str) -> Result<[u8; 32], ConfigError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| {
            ConfigError::Invalid(format!(
                "{name} must be 32 random bytes in base64 (set TENGINE_{}; e.g. `openssl rand -base64 32`)",
                name.to_uppercase()
            ))
        })?;
    bytes.try_into().map_err(|_| {
        ConfigError::Invalid(format!(
            "{name} must decode to exactly 32 bytes (set TENGINE_{})",
            name.to_uppercase()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let config = Config::with_overrides(&[]).expect("defaults are valid");
        assert_eq!(config.nats_prefix, "tengine");
        assert!(config.master_key_bytes().is_err(), "no master key by default");
    }

    #[test]
    fn overrides_nested_keys() {
        let config = Config::with_overrides(&[
            ("ingress.listen", "127.0.0.1:0".into()),
            (
                "master_key",
                base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
            ),
        ])
        .expect("valid");
        assert_eq!(config.ingress.listen.port(), 0);
        assert_eq!(config.master_key_bytes().expect("key"), [7u8; 32]);
    }

    #[test]
    fn history_must_outlive_the_event_log() {
        let err = Config::with_overrides(&[("projector.history_retention_days", "7".into())]).unwrap_err();
        assert!(err.to_string().contains("history_retention_days"), "{err}");
        let err = Config::with_overrides(&[("streams.events_max_age_secs", "0".into())]).unwrap_err();
        assert!(err.to_string().contains("unlimited"), "{err}");
        let config = Config::with_overrides(&[
            ("projector.history_retention_days", "0".into()),
            ("streams.events_max_age_secs", "0".into()),
        ])
        .expect("keeping everything is valid");
        assert_eq!(config.projector.history_retention_days, 0);
        assert_eq!(
            Config::with_overrides(&[("projector.history_retention_days", "8".into())])
                .expect("8 days > 7 days + 1 day")
                .projector
                .history_retention_days,
            8
        );
    }

    #[test]
    fn the_projector_holds_a_batch_at_most_a_second() {
        let err = Config::with_overrides(&[("projector.batch_wait_ms", "1001".into())]).unwrap_err();
        assert!(err.to_string().contains("projector.batch_wait_ms"), "{err}");
        let config = Config::with_overrides(&[("projector.batch_wait_ms", "0".into())]).expect("0 is valid");
        assert_eq!(config.projector.batch_wait(), std::time::Duration::ZERO);
    }

    #[test]
    fn the_event_log_outlives_idempotency_keys() {
        let err = Config::with_overrides(&[("streams.events_max_age_secs", "3600".into())]).unwrap_err();
        assert!(err.to_string().contains("idempotency_ttl_secs"), "{err}");
        let err = Config::with_overrides(&[("ingress.idempotency_lease_ms", "10".into())]).unwrap_err();
        assert!(err.to_string().contains("idempotency_lease_ms"), "{err}");
    }

    #[test]
    fn secrets_from_files_only_for_secrets_and_never_twice() {
        let dir = std::env::temp_dir().join(format!("tengine-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let key = dir.join("master_key");
        std::fs::write(&key, "a2V5\n").expect("write");
        let var = |k: &str, v: &std::path::Path| (k.to_owned(), v.display().to_string());
        let found = secrets_from_files(
            [
                var("TENGINE_MASTER_KEY_FILE", &key),
                // Not a secret: a path setting whose name ends in _FILE stays a path.
                var("TENGINE_INGRESS__OAUTH_METADATA_CA_FILE", &key),
            ]
            .into_iter(),
        )
        .expect("read");
        assert_eq!(found, vec![("master_key", "a2V5".to_owned())]);
        let err = secrets_from_files(
            [
                var("TENGINE_ADMIN_TOKEN_FILE", &key),
                ("TENGINE_ADMIN_TOKEN".into(), "x".into()),
            ]
            .into_iter(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
        let err =
            secrets_from_files([var("TENGINE_SESSION_SECRET_FILE", &dir.join("missing"))].into_iter()).unwrap_err();
        assert!(err.to_string().contains("TENGINE_SESSION_SECRET_FILE"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rejects_bad_prefix() {
        let err = Config::with_overrides(&[("nats_prefix", "a.b".into())]).unwrap_err();
        assert!(err.to_string().contains("nats_prefix"));
    }
}
