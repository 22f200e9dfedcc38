//! The audit log of admin writes, kept in the shared store so that every admin replica appends to
//! and reads the same log.
//!
//! Layout (names in [`quickp2p_store::names`]): the counter `admin:audit:seq` numbers events from
//! 1; event `n` is the protobuf-encoded [`v1::AuditEvent`] under the ephemeral key
//! `admin:audit:n`, kept for the store's longest TTL (30 days). Appending event `n` deletes event
//! `n - 10,000`, so at most the newest [`AUDIT_KEEP`] events exist. Listing walks the numbers
//! downwards from the newest (newest first); the page cursor is the next number to read.
//! Filtered listings examine a bounded number of events per page and may return short pages
//! with a cursor.

use bytes::Bytes;
use prost::Message as _;
use quickp2p_proto::v1;
use quickp2p_store::names::{AUDIT_KEEP, AUDIT_SEQUENCE, audit_event_key};
use quickp2p_store::{Store, limits};

use crate::error::AdminError;

/// Longest detail text kept, in bytes.
pub const MAX_DETAIL_LEN: usize = 1024;
/// Longest target kept, in bytes (an application id and a peer id take 129).
pub const MAX_TARGET_LEN: usize = 256;

/// The audit log over the store.
#[derive(Debug, Clone)]
pub struct AuditLog {
    store: Store,
}

/// Filters of a listing (see `ListAuditEventsRequest`).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only events at or after this time; 0 = no bound.
    pub since_unix_ms: u64,
    /// Only events before this time; 0 = no bound.
    pub until_unix_ms: u64,
    /// Only events by this actor; empty = any.
    pub actor: String,
    /// Only events whose action starts with this; empty = any.
    pub action_prefix: String,
}

impl AuditFilter {
    fn matches(&self, e: &v1::AuditEvent) -> bool {
        (self.since_unix_ms == 0 || e.at_unix_ms >= self.since_unix_ms)
            && (self.until_unix_ms == 0 || e.at_unix_ms < self.until_unix_ms)
            && (self.actor.is_empty() || e.actor == self.actor)
            && e.action.starts_with(&self.action_prefix)
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

impl AuditLog {
    /// The log in `store`.
    pub fn new(store: Store) -> AuditLog {
        AuditLog { store }
    }

    /// Appends one event and returns it (with its id). The detail is cut to
    /// [`MAX_DETAIL_LEN`] bytes.
    pub async fn append(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        success: bool,
        detail: String,
    ) -> Result<v1::AuditEvent, AdminError> {
        let seq = self.store.incr_counter(AUDIT_SEQUENCE, 1).await?;
        let seq = u64::try_from(seq).unwrap_or(0);
        let event = v1::AuditEvent {
            event_id: format!("{seq:016}"),
            at_unix_ms: quickp2p_checkpoint::apps::now_ms(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: truncate(target.to_owned(), MAX_TARGET_LEN),
            success,
            detail: truncate(detail, MAX_DETAIL_LEN),
        };
        self.store
            .put_ephemeral(
                &audit_event_key(seq),
                Bytes::from(event.encode_to_vec()),
                limits::MAX_TTL,
            )
            .await?;
        if seq > AUDIT_KEEP {
            self.store
                .delete_ephemeral(&audit_event_key(seq - AUDIT_KEEP))
                .await?;
        }
        metrics::counter!("qp_admin_audit_events_total", "action" => action.to_owned())
            .increment(1);
        Ok(event)
    }

    /// One page of events, newest first. `cursor` is a previous page's cursor (empty = newest);
    /// the returned cursor is empty on the last page.
    pub async fn list(
        &self,
        cursor: &str,
        limit: usize,
        filter: &AuditFilter,
    ) -> Result<(Vec<v1::AuditEvent>, String), AdminError> {
        let newest = u64::try_from(self.store.get_counter(AUDIT_SEQUENCE).await?).unwrap_or(0);
        let start = if cursor.is_empty() {
            newest
        } else {
            cursor
                .strip_prefix('e')
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|n| *n <= newest)
                .ok_or_else(|| AdminError::invalid("page.cursor", "not a cursor of this listing"))?
        };
        let oldest = newest.saturating_sub(AUDIT_KEEP - 1).max(1);
        let budget = limit * 4 + 64;
        let mut events = Vec::with_capacity(limit);
        let mut seq = start;
        let mut examined = 0;
        while seq >= oldest && seq > 0 && events.len() < limit && examined < budget {
            examined += 1;
            let current = seq;
            seq -= 1;
            let Some(raw) = self.store.get_ephemeral(&audit_event_key(current)).await? else {
                continue;
            };
            let event = v1::AuditEvent::decode(raw)
                .map_err(|e| AdminError::Corrupt(format!("audit event {current}: {e}")))?;
            if filter.since_unix_ms != 0 && event.at_unix_ms < filter.since_unix_ms {
                // events are appended in time order: everything older is out of range too
                seq = 0;
                break;
            }
            if filter.matches(&event) {
                events.push(event);
            }
        }
        let next = if seq >= oldest && seq > 0 {
            format!("e{seq}")
        } else {
            String::new()
        };
        Ok((events, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn append_list_filter_and_page() {
        let log = AuditLog::new(Store::embedded());
        for i in 0..5 {
            let action = if i % 2 == 0 {
                "peer.kick"
            } else {
                "app.create"
            };
            log.append("ops", action, &format!("t{i}"), true, "é".repeat(1000))
                .await
                .unwrap();
        }
        let (all, next) = log.list("", 100, &AuditFilter::default()).await.unwrap();
        assert_eq!(all.len(), 5);
        assert!(next.is_empty());
        assert_eq!(all[0].target, "t4", "newest first");
        assert_eq!(
            all[0].detail.len(),
            MAX_DETAIL_LEN,
            "cut on a character boundary"
        );
        assert!(all[0].event_id > all[1].event_id);

        let (page, next) = log.list("", 2, &AuditFilter::default()).await.unwrap();
        assert_eq!(page.len(), 2);
        let (rest, last) = log.list(&next, 10, &AuditFilter::default()).await.unwrap();
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[0].target, "t2");
        assert!(last.is_empty());

        let apps = AuditFilter {
            action_prefix: "app.".into(),
            ..AuditFilter::default()
        };
        let (only, _) = log.list("", 100, &apps).await.unwrap();
        assert_eq!(only.len(), 2);
        assert!(log.list("zz", 1, &apps).await.is_err());
        let long = log
            .append("x", "peer.kick", &"t".repeat(5000), false, String::new())
            .await
            .unwrap();
        assert_eq!(long.target.len(), MAX_TARGET_LEN);
    }
}
