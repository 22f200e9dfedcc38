//! Connections of the Redis backend: URL forms, the command connection (one Redis or a
//! cluster), and the mapping of [`redis::RedisError`] to [`StoreError`].

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ConnectionInfo, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture,
    ServerErrorKind, Value,
};

use crate::StoreError;

/// Where the Redis deployment is, parsed from [`super::RedisConfig::url`].
#[derive(Debug, Clone)]
pub(crate) enum Topology {
    /// One Redis server.
    Single(Box<ConnectionInfo>),
    /// Seed nodes of a Redis Cluster.
    Cluster(Vec<ConnectionInfo>),
}

/// Parses the URL forms:
/// - `redis://[user:pass@]host:port[/db]`, `rediss://...` — one server;
/// - `redis+cluster://[user:pass@]h1:p1,h2:p2,...` (or `rediss+cluster://`) — cluster seeds;
/// - several URLs separated by commas — cluster seeds (a part without a scheme takes the first
///   part's scheme).
pub(crate) fn parse_topology(url: &str) -> Result<Topology, StoreError> {
    let url = url.trim();
    let bad = |reason: String| StoreError::Config { reason };
    for (cluster_scheme, scheme) in [
        ("redis+cluster://", "redis"),
        ("rediss+cluster://", "rediss"),
    ] {
        if let Some(rest) = url.strip_prefix(cluster_scheme) {
            let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(authority_end);
            let (userinfo, hosts) = match authority.rsplit_once('@') {
                Some((user, hosts)) => (format!("{user}@"), hosts),
                None => (String::new(), authority),
            };
            let nodes = hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| connection_info(&format!("{scheme}://{userinfo}{h}{tail}")))
                .collect::<Result<Vec<_>, _>>()?;
            if nodes.is_empty() {
                return Err(bad(format!("{cluster_scheme} URL names no node")));
            }
            return Ok(Topology::Cluster(nodes));
        }
    }
    if url.contains(',') {
        let mut parts = url.split(',').map(str::trim).filter(|p| !p.is_empty());
        let first = parts.next().unwrap_or_default();
        let scheme = first.split_once("://").map(|(s, _)| s).unwrap_or("redis");
        let mut nodes = vec![connection_info(first)?];
        for part in parts {
            if part.contains("://") {
                nodes.push(connection_info(part)?);
            } else {
                nodes.push(connection_info(&format!("{scheme}://{part}"))?);
            }
        }
        return Ok(Topology::Cluster(nodes));
    }
    Ok(Topology::Single(Box::new(connection_info(url)?)))
}

fn connection_info(url: &str) -> Result<ConnectionInfo, StoreError> {
    url.into_connection_info().map_err(|e| StoreError::Config {
        reason: format!("bad Redis URL `{}`: {e}", redact_url(url)),
    })
}

/// The URL with any password replaced by `***`, for logs and `Debug`.
pub(crate) fn redact_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(pos) = rest.find("://") {
        let (head, after) = rest.split_at(pos + 3);
        out.push_str(head);
        let authority_end = after.find(['/', '?', ',']).unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => out.push_str(&format!("{user}:***")),
                    None => out.push_str("***"),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

/// A command connection: cheap to clone, reconnects by itself.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Maps a Redis client error of operation `op` (bounded by `after`) to the store's error.
pub(crate) fn map_error(op: &'static str, after: Duration, e: RedisError) -> StoreError {
    let reason = e.to_string();
    let unavailable = || StoreError::Unavailable {
        reason: e.to_string(),
    };
    if e.is_timeout() {
        return StoreError::Timeout { op, after };
    }
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        return unavailable();
    }
    match e.kind() {
        ErrorKind::Io
        | ErrorKind::ClusterConnectionNotFound
        | ErrorKind::AuthenticationFailed
        | ErrorKind::RESP3NotSupported => unavailable(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask,
        ) => unavailable(),
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => StoreError::Corrupt {
            key: "(reply)".into(),
            reason,
        },
        ErrorKind::InvalidClientConfig => StoreError::Config { reason },
        _ if reason.contains("overflow") => StoreError::invalid("counter would overflow"),
        _ => StoreError::Backend { reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        assert!(matches!(
            parse_topology("redis://127.0.0.1:6379/0").unwrap(),
            Topology::Single(_)
        ));
        match parse_topology("redis+cluster://u:pw@10.0.0.1:7000,10.0.0.2:7001").unwrap() {
            Topology::Cluster(nodes) => {
                assert_eq!(nodes.len(), 2);
                assert_eq!(nodes[1].addr().to_string(), "10.0.0.2:7001");
                assert_eq!(nodes[1].redis_settings().password(), Some("pw"));
            }
            other => panic!("{other:?}"),
        }
        match parse_topology("redis://a:1, b:2 ,redis://c:3").unwrap() {
            Topology::Cluster(nodes) => assert_eq!(nodes.len(), 3),
            other => panic!("{other:?}"),
        }
        assert!(parse_topology("redis+cluster://").is_err());
        assert!(parse_topology("http://x").is_err());
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("redis://user:secret@h:1/0"),
            "redis://user:***@h:1/0"
        );
        assert_eq!(redact_url("rediss://secret@h:1"), "rediss://***@h:1");
        assert_eq!(
            redact_url("redis://a:1,redis://u:p@b:2"),
            "redis://a:1,redis://u:***@b:2"
        );
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
    }
}
