//! What one peer may publish, and the checks of every request field against it. Pure functions
//! over the protocol types, so they are tested without a store.
//!
//! The defaults are the protocol's (`SessionLimits` in `peer.proto`): 32 attributes per peer,
//! keys of 1 to 64 bytes of ASCII letters, digits and `.` `_` `-` `:` `/`, values of at most
//! 1024 bytes of UTF-8 without NUL. Gateways announce these figures to peers in `Welcome`.

use std::collections::BTreeMap;

use quickp2p_proto::v1;

use crate::IndexError;

/// Longest application id (bytes), as `common.proto` defines it.
pub const MAX_APP_ID_BYTES: usize = 64;
/// Longest value or prefix in a query filter (bytes), as `index.proto` defines it.
pub const MAX_FILTER_VALUE_BYTES: usize = 1024;

/// Per-peer publishing limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttributeLimits {
    /// Most attributes one peer holds at once (also the most one request may carry).
    pub max_attributes: u32,
    /// Longest key, bytes.
    pub max_key_bytes: u32,
    /// Longest value, bytes.
    pub max_value_bytes: u32,
}

impl Default for AttributeLimits {
    fn default() -> AttributeLimits {
        AttributeLimits {
            max_attributes: 32,
            max_key_bytes: 64,
            max_value_bytes: 1024,
        }
    }
}

/// An application id as `common.proto` defines it: 1 to 64 bytes of lowercase ASCII letters,
/// digits and `-`, starting with a letter or digit.
pub fn app_id(field: &'static str, app: Option<&v1::AppId>) -> Result<String, IndexError> {
    let id = app.map(|a| a.value.as_str()).unwrap_or_default();
    let ok = !id.is_empty()
        && id.len() <= MAX_APP_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-');
    if ok {
        Ok(id.to_owned())
    } else {
        Err(IndexError::invalid(
            field,
            "must be 1 to 64 of a-z, 0-9 and '-', starting with a letter or digit",
        ))
    }
}

/// A peer id: exactly 32 bytes. Returns its text form (lowercase hex, which sorts like the bytes).
pub fn peer_id(field: &'static str, peer: Option<&v1::PeerId>) -> Result<String, IndexError> {
    match peer {
        Some(p) if p.is_valid() => Ok(p.to_string()),
        _ => Err(IndexError::invalid(field, "must be a 32-byte peer id")),
    }
}

impl AttributeLimits {
    /// Checks one key.
    pub fn key(&self, field: &'static str, key: &str) -> Result<(), IndexError> {
        if key.is_empty() {
            return Err(IndexError::invalid(field, "an attribute key is empty"));
        }
        if key.len() > self.max_key_bytes as usize {
            return Err(IndexError::too_large(
                field,
                format!(
                    "attribute key {:?}… is longer than {} bytes",
                    truncated(key),
                    self.max_key_bytes
                ),
                u64::from(self.max_key_bytes),
            ));
        }
        if let Some(c) = key
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/')))
        {
            return Err(IndexError::invalid(
                field,
                format!(
                    "attribute key {:?} contains {c:?} (allowed: ASCII letters, digits and . _ - : /)",
                    truncated(key)
                ),
            ));
        }
        Ok(())
    }

    /// Checks one value.
    pub fn value(&self, field: &'static str, key: &str, value: &str) -> Result<(), IndexError> {
        if value.len() > self.max_value_bytes as usize {
            return Err(IndexError::too_large(
                field,
                format!(
                    "the value of attribute {key:?} has {} bytes, more than {}",
                    value.len(),
                    self.max_value_bytes
                ),
                u64::from(self.max_value_bytes),
            ));
        }
        if value.contains('\0') {
            return Err(IndexError::invalid(
                field,
                format!("the value of attribute {key:?} contains NUL"),
            ));
        }
        Ok(())
    }

    /// Checks the attributes of a publish request; returns them as a map (unique keys).
    pub fn attributes(
        &self,
        field: &'static str,
        attributes: Vec<v1::Attribute>,
    ) -> Result<BTreeMap<String, String>, IndexError> {
        if attributes.len() > self.max_attributes as usize {
            return Err(self.too_many(field, attributes.len()));
        }
        let mut map = BTreeMap::new();
        for a in attributes {
            self.key(field, &a.key)?;
            self.value(field, &a.key, &a.value)?;
            if map.contains_key(&a.key) {
                return Err(IndexError::invalid(
                    field,
                    format!("attribute key {:?} appears twice", a.key),
                ));
            }
            map.insert(a.key, a.value);
        }
        Ok(map)
    }

    /// Checks the keys of an unpublish request.
    pub fn keys(&self, field: &'static str, keys: &[String]) -> Result<(), IndexError> {
        if keys.len() > self.max_attributes as usize {
            return Err(IndexError::too_large(
                field,
                format!(
                    "{} keys in one request, more than {}",
                    keys.len(),
                    self.max_attributes
                ),
                u64::from(self.max_attributes),
            ));
        }
        keys.iter().try_for_each(|k| self.key(field, k))
    }

    /// The error for a peer that would hold `count` attributes.
    pub fn too_many(&self, field: &'static str, count: usize) -> IndexError {
        IndexError::too_large(
            field,
            format!(
                "a peer may publish at most {} attributes; this request would make {count}",
                self.max_attributes
            ),
            u64::from(self.max_attributes),
        )
    }
}

fn truncated(s: &str) -> &str {
    let mut end = s.len().min(32);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickp2p_proto::v1::ErrorCode;

    fn attr(k: &str, v: &str) -> v1::Attribute {
        v1::Attribute {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn keys_follow_the_protocol_syntax() {
        let l = AttributeLimits::default();
        assert!(l.key("k", "service.chat/v1:room_2-a").is_ok());
        assert_eq!(l.key("k", "").unwrap_err().code(), ErrorCode::Invalid);
        assert_eq!(l.key("k", "a b").unwrap_err().code(), ErrorCode::Invalid);
        assert_eq!(l.key("k", "é").unwrap_err().code(), ErrorCode::Invalid);
        assert!(l.key("k", &"a".repeat(64)).is_ok());
        let e = l.key("k", &"a".repeat(65)).unwrap_err();
        assert_eq!(e.code(), ErrorCode::TooLarge);
        assert_eq!(e.detail().limit, 64);
    }

    #[test]
    fn values_are_bounded_and_nul_free() {
        let l = AttributeLimits::default();
        assert!(l.value("v", "k", "").is_ok());
        assert!(l.value("v", "k", &"é".repeat(512)).is_ok());
        assert_eq!(
            l.value("v", "k", &"a".repeat(1025)).unwrap_err().code(),
            ErrorCode::TooLarge
        );
        assert_eq!(
            l.value("v", "k", "a\0b").unwrap_err().code(),
            ErrorCode::Invalid
        );
    }

    #[test]
    fn attribute_lists_are_bounded_and_unique() {
        let l = AttributeLimits::default();
        let many: Vec<_> = (0..33).map(|i| attr(&format!("k{i}"), "v")).collect();
        let e = l.attributes("a", many).unwrap_err();
        assert_eq!(e.code(), ErrorCode::TooLarge);
        assert_eq!(e.detail().limit, 32);
        assert_eq!(
            l.attributes("a", vec![attr("k", "1"), attr("k", "2")])
                .unwrap_err()
                .code(),
            ErrorCode::Invalid
        );
        let ok = l
            .attributes("a", vec![attr("b", "2"), attr("a", "1")])
            .unwrap();
        assert_eq!(ok.keys().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn ids() {
        assert_eq!(
            app_id("a", Some(&v1::AppId::new("chat-1"))).unwrap(),
            "chat-1"
        );
        for bad in ["", "-x", "Chat", "a_b", &"a".repeat(65)] {
            assert!(app_id("a", Some(&v1::AppId::new(bad))).is_err(), "{bad}");
        }
        assert!(app_id("a", None).is_err());
        assert!(peer_id("p", Some(&v1::PeerId::from_public_key([7; 32]))).is_ok());
        assert!(
            peer_id(
                "p",
                Some(&v1::PeerId {
                    value: vec![1; 31].into()
                })
            )
            .is_err()
        );
    }

    proptest::proptest! {
        /// No input makes a check panic, and accepted keys are within the limits.
        #[test]
        fn checks_never_panic(key in ".{0,80}", value in ".{0,40}") {
            let l = AttributeLimits::default();
            if l.key("k", &key).is_ok() {
                proptest::prop_assert!(!key.is_empty() && key.len() <= 64 && key.is_ascii());
            }
            let _ = l.value("v", &key, &value);
        }
    }
}
