//! Bounds the store enforces on every call, so that no call does unbounded work or stores
//! unbounded data, whatever the backend. Services enforce their own, stricter product limits
//! (e.g. attributes per peer) on top.
//!
//! **Identifiers** (application, peer, gateway, session-free ids such as replica ids, roles,
//! counter names, channel names and ephemeral keys) are 1..=[`MAX_ID_LEN`] bytes of UTF-8 without
//! control characters and without `{` or `}` (braces would break Redis Cluster hash tags).

use std::time::Duration;

use crate::StoreError;

/// Maximum length of an identifier, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Maximum length of an attribute key, in bytes.
pub const MAX_ATTRIBUTE_KEY_LEN: usize = 256;
/// Maximum length of an attribute value (and of a value prefix in a query), in bytes.
pub const MAX_ATTRIBUTE_VALUE_LEN: usize = 8 * 1024;
/// Maximum number of attributes (or keys) in one publish/unpublish call.
pub const MAX_ATTRIBUTES_PER_CALL: usize = 1024;
/// Maximum size of a binary value: ephemeral values, pub/sub payloads, peer extension data.
pub const MAX_BLOB_LEN: usize = 1024 * 1024;
/// Maximum size of the text fields of a record (display name, secret verifier, address, ...).
pub const MAX_TEXT_LEN: usize = 16 * 1024;
/// Longest accepted TTL.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Page size used when a request asks for `0` items.
pub const DEFAULT_PAGE_LIMIT: u32 = 100;
/// Largest page size; larger requests are capped.
pub const MAX_PAGE_LIMIT: u32 = 1000;
/// Largest number of expired peers one call purges on the side (lazy sweep); the rest is left to
/// later calls or to [`crate::Store::sweep_expired_peers`].
pub const SWEEP_BATCH: usize = 32;
/// Largest number of entries one batched write ([`crate::Store::put_ephemeral_many`]) takes.
pub const MAX_BATCH: usize = 1024;
/// Largest number of live replicas [`crate::Store::list_replicas`] returns.
pub const MAX_REPLICAS_LISTED: usize = 10_000;
/// Largest number of fields [`crate::Store::get_counter_map`] returns.
pub const MAX_COUNTER_MAP_FIELDS: usize = 10_000;

/// How many index or listing entries one paginated call may examine for a page of `limit`
/// items (entries of expired peers are skipped and cleaned, so a page may need more than
/// `limit`; beyond this budget the page is returned short with a cursor).
pub(crate) fn scan_budget(limit: usize) -> usize {
    limit * 4 + 64
}

pub(crate) fn id(what: &str, value: &str) -> Result<(), StoreError> {
    if value.is_empty() {
        return Err(StoreError::invalid(format!("{what}: empty")));
    }
    if value.len() > MAX_ID_LEN {
        return Err(StoreError::invalid(format!(
            "{what}: longer than {MAX_ID_LEN} bytes"
        )));
    }
    if value
        .chars()
        .any(|c| c.is_control() || c == '{' || c == '}')
    {
        return Err(StoreError::invalid(format!(
            "{what}: contains a control character or a brace"
        )));
    }
    Ok(())
}

pub(crate) fn attribute_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::invalid("attribute key: empty"));
    }
    if key.len() > MAX_ATTRIBUTE_KEY_LEN {
        return Err(StoreError::invalid(format!(
            "attribute key: longer than {MAX_ATTRIBUTE_KEY_LEN} bytes"
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(StoreError::invalid(
            "attribute key: contains a control character",
        ));
    }
    Ok(())
}

/// Values may be empty and may hold any character except NUL (the index separates value and
/// peer id with NUL).
pub(crate) fn attribute_value(what: &str, value: &str) -> Result<(), StoreError> {
    if value.len() > MAX_ATTRIBUTE_VALUE_LEN {
        return Err(StoreError::invalid(format!(
            "{what}: longer than {MAX_ATTRIBUTE_VALUE_LEN} bytes"
        )));
    }
    if value.contains('\0') {
        return Err(StoreError::invalid(format!("{what}: contains NUL")));
    }
    Ok(())
}

pub(crate) fn text(what: &str, value: &str) -> Result<(), StoreError> {
    if value.len() > MAX_TEXT_LEN {
        return Err(StoreError::invalid(format!(
            "{what}: longer than {MAX_TEXT_LEN} bytes"
        )));
    }
    Ok(())
}

pub(crate) fn blob(what: &str, len: usize) -> Result<(), StoreError> {
    if len > MAX_BLOB_LEN {
        return Err(StoreError::invalid(format!(
            "{what}: larger than {MAX_BLOB_LEN} bytes"
        )));
    }
    Ok(())
}

/// Checks a TTL and returns it in whole milliseconds (rounded up, at least 1).
pub(crate) fn ttl(ttl: Duration) -> Result<u64, StoreError> {
    if ttl.is_zero() {
        return Err(StoreError::invalid("ttl: zero"));
    }
    if ttl > MAX_TTL {
        return Err(StoreError::invalid(format!("ttl: longer than {MAX_TTL:?}")));
    }
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    Ok(u64::try_from(ms).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(id("x", "peer-1:abc").is_ok());
        assert!(id("x", "").is_err());
        assert!(id("x", "a{b").is_err());
        assert!(id("x", "a}b").is_err());
        assert!(id("x", "a\nb").is_err());
        assert!(id("x", &"a".repeat(MAX_ID_LEN)).is_ok());
        assert!(id("x", &"a".repeat(MAX_ID_LEN + 1)).is_err());
    }

    #[test]
    fn ttls() {
        assert!(ttl(Duration::ZERO).is_err());
        assert_eq!(ttl(Duration::from_micros(1)).unwrap(), 1);
        assert_eq!(ttl(Duration::from_micros(1500)).unwrap(), 2);
        assert_eq!(ttl(Duration::from_secs(2)).unwrap(), 2000);
        assert!(ttl(MAX_TTL + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn values() {
        assert!(attribute_value("v", "").is_ok());
        assert!(attribute_value("v", "a\0b").is_err());
        assert!(attribute_key("").is_err());
        assert!(attribute_key("a{b}").is_ok());
    }
}
