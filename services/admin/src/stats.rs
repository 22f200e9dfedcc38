//! Network statistics (`GetNetworkStats`): a snapshot assembled from the shared store and the
//! relays' control APIs.
//!
//! - peers online per application: [`Store::count_peers`] of every application (at most
//!   [`MAX_APPS`] applications are examined);
//! - NAT histogram: the latest NAT report of each online peer (ephemeral key
//!   [`names::nat_report_key`]); at most [`MAX_NAT_SCAN`] peers are examined per snapshot, peers
//!   without a report count under the unspecified class;
//! - punch matrix: the handshake role's counter maps [`names::HANDSHAKE_OUTCOMES_MAP`] and
//!   [`names::HANDSHAKE_READY_MS_MAP`] (or their per-application twins); median and 95th
//!   percentile are the upper bounds of the histogram buckets they fall in;
//! - relays: each relay replica's `Relay.GetStats` (its `control` address from the registry),
//!   or, when it does not answer within a second or registered an unspecified address such as
//!   `0.0.0.0`, what its registry record says (allocations, capacity, draining; no byte counts);
//! - replicas: the registry of every role; a listed replica refreshed its record within its TTL
//!   (READY, or NOT_READY when it says it is draining).

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message as _;
use quickp2p_proto::v1;
use quickp2p_store::{PageRequest, Replica, Store, names};

use crate::error::AdminError;

/// Most applications one statistics snapshot or peer listing examines.
pub const MAX_APPS: usize = 10_000;
/// Most peers whose NAT report one snapshot reads.
pub const MAX_NAT_SCAN: usize = 20_000;
/// Registry role names and the roles they stand for.
pub const ROLES: [(&str, v1::ServiceRole); 8] = [
    ("gateway", v1::ServiceRole::Gateway),
    ("checkpoint", v1::ServiceRole::Checkpoint),
    ("stun-a", v1::ServiceRole::StunA),
    ("stun-b", v1::ServiceRole::StunB),
    ("relay", v1::ServiceRole::Relay),
    ("handshake", v1::ServiceRole::Handshake),
    ("index", v1::ServiceRole::Index),
    ("admin", v1::ServiceRole::Admin),
];

/// Every application id, ordered (at most [`MAX_APPS`]).
pub async fn all_app_ids(store: &Store) -> Result<Vec<String>, AdminError> {
    let mut ids = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_apps(PageRequest {
                cursor,
                limit: 1000,
            })
            .await?;
        ids.extend(page.items.into_iter().map(|a| a.id));
        match page.next {
            Some(next) if ids.len() < MAX_APPS => cursor = Some(next),
            _ => break,
        }
    }
    ids.truncate(MAX_APPS);
    Ok(ids)
}

/// The latest NAT report of a peer, if it reported one during its session.
pub async fn nat_report(
    store: &Store,
    app_id: &str,
    peer_id: &str,
) -> Result<Option<v1::NatReport>, AdminError> {
    let Some(raw) = store
        .get_ephemeral(&names::nat_report_key(app_id, peer_id))
        .await?
    else {
        return Ok(None);
    };
    // a report that does not decode is treated as absent (written by a newer or broken writer)
    Ok(v1::NatReport::decode(raw).ok())
}

/// A NAT class from its `M/F` text form (enum numbers).
fn parse_class(text: &str) -> Option<v1::NatClass> {
    let (m, f) = text.split_once('/')?;
    Some(v1::NatClass {
        mapping: m.parse().ok()?,
        filtering: f.parse().ok()?,
    })
}

fn class_key(c: &v1::NatClass) -> (i32, i32) {
    (c.mapping, c.filtering)
}

/// The punch matrix from the two counter maps (fields as documented in
/// [`quickp2p_store::names`]); malformed fields are skipped.
pub fn punch_matrix(
    outcomes: &BTreeMap<String, i64>,
    ready_ms: &BTreeMap<String, i64>,
) -> Vec<v1::PunchPairStats> {
    type Pair = ((i32, i32), (i32, i32));
    let mut pairs: BTreeMap<Pair, v1::PunchPairStats> = BTreeMap::new();
    let mut histograms: BTreeMap<Pair, BTreeMap<u32, u64>> = BTreeMap::new();
    let split = |field: &str| -> Option<(v1::NatClass, v1::NatClass, String)> {
        let mut parts = field.splitn(3, '|');
        let a = parse_class(parts.next()?)?;
        let b = parse_class(parts.next()?)?;
        Some((a, b, parts.next()?.to_owned()))
    };
    for (field, count) in outcomes {
        let Some((a, b, outcome)) = split(field) else {
            continue;
        };
        let count = u64::try_from(*count).unwrap_or(0);
        let entry = pairs
            .entry((class_key(&a), class_key(&b)))
            .or_insert_with(|| v1::PunchPairStats {
                initiator: Some(a),
                responder: Some(b),
                ..v1::PunchPairStats::default()
            });
        match outcome.as_str() {
            "direct" => entry.direct += count,
            "relayed" => entry.relayed += count,
            "failed" => entry.failed += count,
            _ => {}
        }
    }
    for (field, count) in ready_ms {
        let Some((a, b, bucket)) = split(field) else {
            continue;
        };
        let Ok(bucket) = bucket.parse::<u32>() else {
            continue;
        };
        *histograms
            .entry((class_key(&a), class_key(&b)))
            .or_default()
            .entry(bucket)
            .or_default() += u64::try_from(*count).unwrap_or(0);
    }
    for (pair, histogram) in histograms {
        if let Some(entry) = pairs.get_mut(&pair) {
            entry.median_ready_ms = quantile(&histogram, 0.5);
            entry.p95_ready_ms = quantile(&histogram, 0.95);
        }
    }
    pairs.into_values().collect()
}

/// The upper bound of the bucket holding quantile `q` of a histogram; 0 when empty.
fn quantile(histogram: &BTreeMap<u32, u64>, q: f64) -> u32 {
    let total: u64 = histogram.values().sum();
    if total == 0 {
        return 0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (bucket, count) in histogram {
        seen += count;
        if seen >= rank {
            return *bucket;
        }
    }
    0
}

/// A registry record as a `ReplicaRecord`.
pub fn replica_record(role: v1::ServiceRole, r: &Replica) -> v1::ReplicaRecord {
    let meta = |k: &str| r.info.metadata.get(k).map(String::as_str);
    let draining = meta("draining") == Some("true");
    let mut advertised = Vec::new();
    for key in ["advertised_quic", "quic"] {
        if let Some(a) = meta(key).and_then(|a| a.parse::<std::net::SocketAddr>().ok()) {
            advertised.push(a.into());
            break;
        }
    }
    if let Ok(a) = r.info.advertised_addr.parse::<std::net::SocketAddr>() {
        advertised.push(a.into());
    }
    let grpc_endpoint = match meta("control") {
        Some(control) => control.to_owned(),
        None => r.info.advertised_addr.clone(),
    };
    let capacity: u64 = meta("capacity").and_then(|c| c.parse().ok()).unwrap_or(0);
    let load_percent = r
        .info
        .load
        .saturating_mul(100)
        .checked_div(capacity)
        .map_or(0, |p| u32::try_from(p.min(100)).unwrap_or(100));
    v1::ReplicaRecord {
        role: role as i32,
        replica_id: r.replica_id.clone(),
        version: meta("version").unwrap_or_default().to_owned(),
        grpc_endpoint,
        advertised_addresses: advertised,
        health: if draining {
            v1::ReplicaHealth::NotReady
        } else {
            v1::ReplicaHealth::Ready
        } as i32,
        started_at_unix_ms: meta("started_at_unix_ms")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        refreshed_at_unix_ms: meta("refreshed_at_unix_ms")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        load_percent,
    }
}

/// One relay's statistics: from its control API, else from its registry record.
async fn relay_stats(r: &Replica) -> v1::RelayStats {
    let meta = |k: &str| r.info.metadata.get(k).map(String::as_str);
    // a relay bound to 0.0.0.0 registers that address: not reachable from here, use the record
    let reachable = meta("control").filter(|c| {
        c.parse::<std::net::SocketAddr>()
            .is_ok_and(|a| !a.ip().is_unspecified())
    });
    if let Some(control) = reachable {
        let url = format!("http://{control}");
        if let Ok(endpoint) = tonic::transport::Endpoint::from_shared(url) {
            let channel = endpoint
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(1))
                .connect_lazy();
            let mut client = v1::relay_client::RelayClient::new(channel);
            if let Ok(Ok(response)) = tokio::time::timeout(
                Duration::from_secs(1),
                client.get_stats(v1::RelayStatsRequest {}),
            )
            .await
                && let Some(mut stats) = response.into_inner().stats
            {
                stats.relay_id = r.replica_id.clone();
                return stats;
            }
        }
    }
    v1::RelayStats {
        relay_id: r.replica_id.clone(),
        allocations: u32::try_from(r.info.load).unwrap_or(u32::MAX),
        capacity: meta("capacity").and_then(|c| c.parse().ok()).unwrap_or(0),
        draining: meta("draining") == Some("true"),
        servers: r
            .info
            .advertised_addr
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(Into::into)
            .into_iter()
            .collect(),
        ..v1::RelayStats::default()
    }
}

/// The whole snapshot, optionally restricted to one application.
pub async fn network_stats(
    store: &Store,
    app: Option<&str>,
) -> Result<v1::NetworkStats, AdminError> {
    let apps = match app {
        Some(a) => vec![a.to_owned()],
        None => all_app_ids(store).await?,
    };
    let mut stats = v1::NetworkStats {
        taken_at_unix_ms: quickp2p_checkpoint::apps::now_ms(),
        ..v1::NetworkStats::default()
    };
    let mut histogram: BTreeMap<(i32, i32), u64> = BTreeMap::new();
    let mut scanned = 0usize;
    for app_id in &apps {
        let online = store.count_peers(app_id).await?;
        stats.peers_online += online;
        stats.peers_per_app.push(v1::AppPeerCount {
            app_id: Some(v1::AppId::new(app_id.clone())),
            online,
        });
        let mut cursor = None;
        let mut calls = 0;
        while online > 0 && scanned < MAX_NAT_SCAN && calls < MAX_NAT_SCAN / 100 {
            calls += 1;
            let page = store
                .list_peers(app_id, PageRequest { cursor, limit: 500 })
                .await?;
            for peer in &page.items {
                scanned += 1;
                let class = nat_report(store, app_id, &peer.peer_id)
                    .await?
                    .and_then(|r| r.behaviour)
                    .map(|b| (b.mapping, b.filtering))
                    .unwrap_or((0, 0));
                *histogram.entry(class).or_default() += 1;
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
    }
    stats.nat_histogram = histogram
        .into_iter()
        .map(|((mapping, filtering), peers)| v1::NatHistogramBucket {
            nat: Some(v1::NatClass { mapping, filtering }),
            peers,
        })
        .collect();
    let (outcomes, ready) = match app {
        Some(a) => (names::app_outcomes_map(a), names::app_ready_ms_map(a)),
        None => (
            names::HANDSHAKE_OUTCOMES_MAP.to_owned(),
            names::HANDSHAKE_READY_MS_MAP.to_owned(),
        ),
    };
    stats.punch_matrix = punch_matrix(
        &store.get_counter_map(&outcomes).await?,
        &store.get_counter_map(&ready).await?,
    );
    stats.punch_counters_since_unix_ms =
        u64::try_from(store.get_counter(names::HANDSHAKE_COUNTERS_SINCE).await?).unwrap_or(0);
    let relays = store.list_replicas("relay").await?;
    stats.relays = futures::future::join_all(relays.iter().map(relay_stats)).await;
    for (name, role) in ROLES {
        let replicas = store.list_replicas(name).await?;
        if !replicas.is_empty() {
            stats.replicas.push(v1::RoleReplicas {
                role: role as i32,
                replicas: replicas.iter().map(|r| replica_record(role, r)).collect(),
            });
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_from_counters() {
        let mut outcomes = BTreeMap::new();
        outcomes.insert(names::outcome_field((1, 1), (3, 3), "direct"), 3);
        outcomes.insert(names::outcome_field((1, 1), (3, 3), "relayed"), 2);
        outcomes.insert(names::outcome_field((1, 1), (3, 3), "failed"), 1);
        outcomes.insert("garbage".into(), 5);
        outcomes.insert("1/x|2/2|direct".into(), 5);
        let mut ready = BTreeMap::new();
        ready.insert(names::ready_ms_field((1, 1), (3, 3), 30), 3);
        ready.insert(names::ready_ms_field((1, 1), (3, 3), 700), 1);
        let m = punch_matrix(&outcomes, &ready);
        assert_eq!(m.len(), 1);
        let p = &m[0];
        assert_eq!((p.direct, p.relayed, p.failed), (3, 2, 1));
        assert_eq!(p.initiator.as_ref().unwrap().mapping, 1);
        assert_eq!(p.responder.as_ref().unwrap().filtering, 3);
        assert_eq!(p.median_ready_ms, 50);
        assert_eq!(p.p95_ready_ms, 800);
    }

    #[test]
    fn quantiles() {
        assert_eq!(quantile(&BTreeMap::new(), 0.5), 0);
        let h: BTreeMap<u32, u64> = [(100, 1)].into();
        assert_eq!(quantile(&h, 0.95), 100);
    }
}
