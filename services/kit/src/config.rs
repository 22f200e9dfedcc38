//! Typed configuration from flags and `QP_*` environment variables.
//!
//! Binaries declare their flags with clap, each flag backed by a `QP_*` variable, and keep the raw
//! values as `Option<String>`: clap then never stops at the first bad value. The typed
//! configuration is built with a [`FieldErrors`] collector, which parses every field, remembers
//! every failure with the flag and variable name, and reports them all at once:
//!
//! ```text
//! invalid configuration (2 problems):
//!   --http-addr / QP_HTTP_ADDR: "localhost:x" is not a socket address (invalid socket address syntax)
//!   --log-format / QP_LOG_FORMAT: "yaml" is not one of: text, json
//! ```
//!
//! Tests build configurations from flag lists with [`parse_flags_only`], which ignores the
//! process environment, so a `QP_*` variable set on the test machine cannot change a test.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// One configuration value that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The names the value can be given by, e.g. `--http-addr / QP_HTTP_ADDR`.
    pub name: String,
    /// What is wrong with it, quoting the value.
    pub message: String,
}

/// Every problem found in one configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The problems, in the order the fields were read.
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {}: {}", e.name, e.message)?;
        }
        Ok(())
    }
}

/// Collects configuration problems while a typed configuration is built.
#[derive(Debug, Default)]
pub struct FieldErrors {
    errors: Vec<FieldError>,
}

impl FieldErrors {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `raw` as a `T`, or returns `default` when it is absent. A value that does not parse
    /// is recorded under `name` and `default` is returned so that reading can go on.
    pub fn parse<T>(&mut self, name: &str, raw: Option<&str>, default: T) -> T
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        self.parse_opt(name, raw).unwrap_or(default)
    }

    /// Parses `raw` as a `T` when present. A value that does not parse is recorded under `name`.
    pub fn parse_opt<T>(&mut self, name: &str, raw: Option<&str>) -> Option<T>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        let raw = raw?;
        match raw.trim().parse::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(name, format!("{raw:?} is not valid ({e})"));
                None
            }
        }
    }

    /// Parses a socket address, with a message that says what form is expected.
    pub fn socket_addr(
        &mut self,
        name: &str,
        raw: Option<&str>,
        default: SocketAddr,
    ) -> SocketAddr {
        match raw {
            None => default,
            Some(raw) => match raw.trim().parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    self.push(
                        name,
                        format!("{raw:?} is not a socket address (expected IP:PORT, e.g. 127.0.0.1:9090 or [::1]:9090)"),
                    );
                    default
                }
            },
        }
    }

    /// Picks one of a fixed set of words (case-insensitive).
    pub fn one_of<T: Copy>(
        &mut self,
        name: &str,
        raw: Option<&str>,
        choices: &[(&str, T)],
        default: T,
    ) -> T {
        let Some(raw) = raw else { return default };
        let wanted = raw.trim();
        if let Some((_, v)) = choices.iter().find(|(w, _)| w.eq_ignore_ascii_case(wanted)) {
            return *v;
        }
        let words: Vec<&str> = choices.iter().map(|(w, _)| *w).collect();
        self.push(name, format!("{raw:?} is not one of: {}", words.join(", ")));
        default
    }

    /// Records a problem when `ok` is false.
    pub fn check(&mut self, name: &str, ok: bool, message: impl Into<String>) {
        if !ok {
            self.push(name, message.into());
        }
    }

    /// Records a problem.
    pub fn push(&mut self, name: &str, message: String) {
        self.errors.push(FieldError {
            name: name.to_owned(),
            message,
        });
    }

    /// Whether any problem has been recorded so far.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Ends reading: `Ok` when every value was usable, or all the problems at once.
    pub fn finish(self) -> Result<(), ConfigError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                errors: self.errors,
            })
        }
    }
}

/// Parses command-line flags the way `C::try_parse_from` does, but with every `env = "QP_…"`
/// fallback switched off: only `args` count. For tests, which must not depend on the variables of
/// the machine they run on.
pub fn parse_flags_only<C, I, T>(args: I) -> Result<C, clap::Error>
where
    C: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let command = C::command().mut_args(|a| a.env(None));
    let matches = command.try_get_matches_from(args)?;
    <C as clap::FromArgMatches>::from_arg_matches(&matches)
}

/// Output format of the process logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default; for terminals).
    Text,
    /// One JSON object per line (for log collectors in Kubernetes).
    Json,
}

/// Where the shared state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreTarget {
    /// In this process (all-in-one only; one replica of each role).
    Embedded,
    /// A Redis server or cluster.
    Redis {
        /// `redis://`, `rediss://` or a cluster URL, as the store crate accepts it.
        url: String,
        /// Prefix of every key (default `qp`).
        key_prefix: String,
    },
}

/// The flags every quickP2P process takes, each also readable from its `QP_*` variable.
///
/// Flatten it into a binary's clap struct with `#[command(flatten)]`, then call
/// [`ServiceArgs::resolve`] with the role's defaults.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServiceArgs {
    /// Address of the operations HTTP server (/healthz, /readyz, /metrics).
    #[arg(long, env = "QP_HTTP_ADDR", value_name = "IP:PORT")]
    pub http_addr: Option<String>,

    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `info,quickp2p_store=debug`.
    #[arg(long = "log", env = "QP_LOG", value_name = "FILTER")]
    pub log: Option<String>,

    /// Log format: `text` or `json`.
    #[arg(long, env = "QP_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,

    /// OTLP/gRPC endpoint to export traces to, e.g. `http://otel-collector:4317`. Unset: no export.
    #[arg(long, env = "QP_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// Redis URL of the shared state: `redis://host:6379`, `rediss://…` (TLS), or
    /// `redis+cluster://host1:6379,host2:6379` for Redis Cluster.
    #[arg(long = "redis", env = "QP_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,

    /// Prefix of every key this process writes to Redis (default `qp`).
    #[arg(long, env = "QP_REDIS_KEY_PREFIX", value_name = "PREFIX")]
    pub redis_key_prefix: Option<String>,

    /// This replica's id, unique in the network (default: $HOSTNAME, which is the pod name in
    /// Kubernetes, or a random id).
    #[arg(long, env = "QP_REPLICA_ID", value_name = "ID")]
    pub replica_id: Option<String>,
}

/// Role-specific defaults for [`ServiceArgs::resolve`].
#[derive(Debug, Clone)]
pub struct ServiceDefaults {
    /// The service name used in logs, traces and metrics, e.g. `quickp2p-stun`.
    pub service_name: &'static str,
    /// Operations server address when `--http-addr` is not given.
    pub http_addr: SocketAddr,
    /// Whether the process may run without Redis (only the all-in-one supernode may).
    pub embedded_store_allowed: bool,
}

/// The resolved, typed form of [`ServiceArgs`].
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Service name for logs, traces and metrics.
    pub service_name: String,
    /// Operations HTTP server address.
    pub http_addr: SocketAddr,
    /// Log filter (EnvFilter syntax, validated).
    pub log_filter: String,
    /// Log output format.
    pub log_format: LogFormat,
    /// OTLP/gRPC trace endpoint, when exporting.
    pub otlp_endpoint: Option<String>,
    /// Where shared state lives.
    pub store: StoreTarget,
    /// This replica's id.
    pub replica_id: String,
}

impl ServiceArgs {
    /// Validates every field, recording problems in `errs`, and returns the typed configuration
    /// (meaningful only if `errs` stays empty).
    pub fn resolve(&self, defaults: &ServiceDefaults, errs: &mut FieldErrors) -> ServiceConfig {
        let http_addr = errs.socket_addr(
            "--http-addr / QP_HTTP_ADDR",
            self.http_addr.as_deref(),
            defaults.http_addr,
        );
        let log_filter = self.log.clone().unwrap_or_else(|| "info".to_owned());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_filter) {
            errs.push(
                "--log / QP_LOG",
                format!("{log_filter:?} is not a log filter ({e})"),
            );
        }
        let log_format = errs.one_of(
            "--log-format / QP_LOG_FORMAT",
            self.log_format.as_deref(),
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            LogFormat::Text,
        );
        let otlp_endpoint = self.otlp_endpoint.clone().filter(|s| !s.trim().is_empty());
        if let Some(url) = &otlp_endpoint {
            errs.check(
                "--otlp-endpoint / QP_OTLP_ENDPOINT",
                url.parse::<http::Uri>().is_ok()
                    && (url.starts_with("http://") || url.starts_with("https://")),
                format!("{url:?} is not an http:// or https:// URL"),
            );
        }
        let key_prefix = self
            .redis_key_prefix
            .clone()
            .unwrap_or_else(|| "qp".to_owned());
        errs.check(
            "--redis-key-prefix / QP_REDIS_KEY_PREFIX",
            !key_prefix.is_empty()
                && key_prefix.len() <= 64
                && key_prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
                && !key_prefix.contains(['{', '}']),
            format!(
                "{key_prefix:?} must be 1 to 64 characters of letters, digits, '-', '_', '.' or ':'"
            ),
        );
        let store = match self.redis_url.as_deref().map(str::trim) {
            Some(url) if !url.is_empty() => {
                errs.check(
                    "--redis / QP_REDIS_URL",
                    ["redis://", "rediss://", "redis+cluster://", "rediss+cluster://"]
                        .iter()
                        .any(|s| url.starts_with(s)),
                    format!(
                        "{url:?} is not a Redis URL (expected redis://HOST:PORT, rediss://… or redis+cluster://HOST:PORT,HOST:PORT)"
                    ),
                );
                StoreTarget::Redis {
                    url: url.to_owned(),
                    key_prefix,
                }
            }
            _ => {
                errs.check(
                    "--redis / QP_REDIS_URL",
                    defaults.embedded_store_allowed,
                    format!(
                        "is required: {} shares its state with the other replicas through Redis",
                        defaults.service_name
                    ),
                );
                StoreTarget::Embedded
            }
        };
        let replica_id = self
            .replica_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(random_replica_id);
        errs.check(
            "--replica-id / QP_REPLICA_ID",
            replica_id.len() <= 128
                && replica_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            format!("{replica_id:?} must be at most 128 letters, digits, '-', '_' or '.'"),
        );
        ServiceConfig {
            service_name: defaults.service_name.to_owned(),
            http_addr,
            log_filter,
            log_format,
            otlp_endpoint,
            store,
            replica_id,
        }
    }
}

/// A process-unique replica id when none is configured: `r-` and 12 hex digits from the clock
/// and the process id.
fn random_replica_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
    format!("r-{:012x}", mixed & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        service: ServiceArgs,
    }

    fn defaults(embedded: bool) -> ServiceDefaults {
        ServiceDefaults {
            service_name: "quickp2p-test",
            http_addr: "127.0.0.1:9090".parse().unwrap(),
            embedded_store_allowed: embedded,
        }
    }

    #[test]
    fn defaults_are_the_local_dev_setup() {
        let cli = parse_flags_only::<Cli, _, _>(["t", "--replica-id", "r1"]).unwrap();
        let mut errs = FieldErrors::new();
        let cfg = cli.service.resolve(&defaults(true), &mut errs);
        errs.finish().unwrap();
        assert_eq!(
            cfg.http_addr,
            "127.0.0.1:9090".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(cfg.log_format, LogFormat::Text);
        assert_eq!(cfg.store, StoreTarget::Embedded);
        assert_eq!(cfg.otlp_endpoint, None);
        assert_eq!(cfg.replica_id, "r1");
    }

    #[test]
    fn every_bad_value_is_reported_at_once_by_name() {
        let cli = parse_flags_only::<Cli, _, _>([
            "t",
            "--http-addr",
            "localhost:x",
            "--log-format",
            "yaml",
            "--otlp-endpoint",
            "collector:4317",
            "--redis",
            "mysql://db",
            "--redis-key-prefix",
            "bad{tag}",
            "--log",
            "info,[[[",
            "--replica-id",
            "a b",
        ])
        .unwrap();
        let mut errs = FieldErrors::new();
        let _ = cli.service.resolve(&defaults(false), &mut errs);
        let err = errs.finish().unwrap_err();
        let names: Vec<&str> = err.errors.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "--http-addr / QP_HTTP_ADDR",
                "--log / QP_LOG",
                "--log-format / QP_LOG_FORMAT",
                "--otlp-endpoint / QP_OTLP_ENDPOINT",
                "--redis-key-prefix / QP_REDIS_KEY_PREFIX",
                "--redis / QP_REDIS_URL",
                "--replica-id / QP_REPLICA_ID",
            ]
        );
        let text = err.to_string();
        assert!(
            text.starts_with("invalid configuration (7 problems):"),
            "{text}"
        );
        assert!(
            text.contains("\"yaml\" is not one of: text, json"),
            "{text}"
        );
        assert!(
            text.contains("\"localhost:x\" is not a socket address"),
            "{text}"
        );
    }

    #[test]
    fn redis_is_required_where_embedded_is_not_allowed() {
        let cli = parse_flags_only::<Cli, _, _>(["t", "--replica-id", "r1"]).unwrap();
        let mut errs = FieldErrors::new();
        let _ = cli.service.resolve(&defaults(false), &mut errs);
        let err = errs.finish().unwrap_err();
        assert_eq!(err.errors.len(), 1);
        assert!(err.errors[0].message.contains("is required"), "{err}");
    }

    #[test]
    fn redis_url_and_prefix_are_taken() {
        let cli = parse_flags_only::<Cli, _, _>([
            "t",
            "--redis",
            "redis://127.0.0.1:6379",
            "--redis-key-prefix",
            "qp-staging",
            "--log-format",
            "JSON",
            "--replica-id",
            "gw-0",
        ])
        .unwrap();
        let mut errs = FieldErrors::new();
        let cfg = cli.service.resolve(&defaults(false), &mut errs);
        errs.finish().unwrap();
        assert_eq!(
            cfg.store,
            StoreTarget::Redis {
                url: "redis://127.0.0.1:6379".into(),
                key_prefix: "qp-staging".into()
            }
        );
        assert_eq!(cfg.log_format, LogFormat::Json);
    }

    #[test]
    fn parse_helpers_record_and_fall_back() {
        let mut errs = FieldErrors::new();
        assert_eq!(errs.parse::<u16>("--port", Some("70000"), 1), 1);
        assert_eq!(errs.parse::<u16>("--port2", Some(" 80 "), 1), 80);
        assert_eq!(errs.parse_opt::<u32>("--n", None), None);
        assert!(!errs.is_empty());
        let err = errs.finish().unwrap_err();
        assert_eq!(err.errors.len(), 1);
        assert_eq!(err.errors[0].name, "--port");
    }
}
