//! Credentials and the three message checksums of RFC 8489: MESSAGE-INTEGRITY
//! (HMAC-SHA1, §14.5), MESSAGE-INTEGRITY-SHA256 (§14.6) and FINGERPRINT (CRC-32,
//! §14.7), plus the key derivations of §9.
//!
//! The HMAC covers the message from its header up to, not including, the integrity
//! attribute, with the header's length field rewritten so the message appears to end
//! right after that attribute. MACs are compared in constant time.
//!
//! Passwords, usernames and realms are taken as already prepared (OpaqueString /
//! SASLprep is the caller's job; for ASCII they are the identity).

use std::fmt;

use hmac::{Hmac, Mac};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::attribute::PasswordAlgorithm;
use super::header::HEADER_LEN;

/// The value FINGERPRINT's CRC-32 is XORed with ("STUN" in ASCII).
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// Length of a MESSAGE-INTEGRITY value (HMAC-SHA1).
pub const SHA1_MAC_LEN: usize = 20;

/// Full length of a MESSAGE-INTEGRITY-SHA256 value (HMAC-SHA256).
pub const SHA256_MAC_LEN: usize = 32;

/// Which integrity attribute a message was verified with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IntegrityAlgorithm {
    /// MESSAGE-INTEGRITY, HMAC-SHA1.
    Sha1,
    /// MESSAGE-INTEGRITY-SHA256, HMAC-SHA256.
    Sha256,
}

/// The short-term credential key (RFC 8489 §9.1.1): the password itself.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ShortTermKey<'a>(&'a [u8]);

impl<'a> ShortTermKey<'a> {
    /// The key for a (prepared) password.
    pub const fn new(password: &'a str) -> ShortTermKey<'a> {
        ShortTermKey(password.as_bytes())
    }

    /// The key bytes to pass to the integrity functions.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.0
    }
}

impl fmt::Debug for ShortTermKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ShortTermKey(..)")
    }
}

/// The long-term credential key (RFC 8489 §9.2.2): MD5 or SHA-256 of
/// `username ":" realm ":" password`, depending on PASSWORD-ALGORITHM.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LongTermKey {
    digest: [u8; 32],
    len: usize,
}

impl LongTermKey {
    /// The MD5 key, the default when no PASSWORD-ALGORITHM was negotiated.
    pub fn md5(username: &str, realm: &str, password: &str) -> LongTermKey {
        let mut hasher = Md5::new();
        feed(&mut hasher, username, realm, password);
        let mut digest = [0u8; 32];
        let out = hasher.finalize();
        let (head, _) = digest.split_at_mut(16);
        head.copy_from_slice(&out);
        LongTermKey { digest, len: 16 }
    }

    /// The SHA-256 key, for PASSWORD-ALGORITHM 0x0002.
    pub fn sha256(username: &str, realm: &str, password: &str) -> LongTermKey {
        let mut hasher = Sha256::new();
        feed(&mut hasher, username, realm, password);
        LongTermKey {
            digest: hasher.finalize().into(),
            len: 32,
        }
    }

    /// The key for a PASSWORD-ALGORITHM number, or `None` for algorithms this crate
    /// does not implement.
    pub fn for_algorithm(
        algorithm: u16,
        username: &str,
        realm: &str,
        password: &str,
    ) -> Option<LongTermKey> {
        match algorithm {
            PasswordAlgorithm::MD5 => Some(LongTermKey::md5(username, realm, password)),
            PasswordAlgorithm::SHA256 => Some(LongTermKey::sha256(username, realm, password)),
            _ => None,
        }
    }

    /// The key bytes (16 for MD5, 32 for SHA-256).
    pub fn as_bytes(&self) -> &[u8] {
        self.digest.get(..self.len).unwrap_or(&self.digest)
    }
}

impl fmt::Debug for LongTermKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LongTermKey({} bytes)", self.len)
    }
}

fn feed<D: Digest>(hasher: &mut D, username: &str, realm: &str, password: &str) {
    hasher.update(username.as_bytes());
    hasher.update(b":");
    hasher.update(realm.as_bytes());
    hasher.update(b":");
    hasher.update(password.as_bytes());
}

/// USERHASH (RFC 8489 §14.4): SHA-256(username ":" realm).
pub fn user_hash(username: &str, realm: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(username.as_bytes());
    hasher.update(b":");
    hasher.update(realm.as_bytes());
    hasher.finalize().into()
}

/// FINGERPRINT of `covered`: CRC-32 XOR 0x5354554E. `covered` is the message up to
/// the FINGERPRINT attribute, its length field already counting FINGERPRINT.
pub fn fingerprint(covered: &[u8]) -> u32 {
    crc32fast::hash(covered) ^ FINGERPRINT_XOR
}

/// The header of `message` with its length field set so the message ends at
/// `end` (the end of the integrity attribute being computed).
fn adjusted_header(message: &[u8], end: usize) -> Option<[u8; HEADER_LEN]> {
    let mut header = *message.first_chunk::<HEADER_LEN>()?;
    let length = u16::try_from(end.checked_sub(HEADER_LEN)?).ok()?;
    let [l0, l1] = length.to_be_bytes();
    let [_, _, len_hi, len_lo, ..] = &mut header;
    *len_hi = l0;
    *len_lo = l1;
    Some(header)
}

/// Feeds the HMAC input for an integrity attribute at `attr_offset` whose value is
/// `mac_len` bytes: adjusted header, then the attributes before it.
fn mac_input<M: Mac>(mut mac: M, message: &[u8], attr_offset: usize, mac_len: usize) -> Option<M> {
    let end = attr_offset.checked_add(4)?.checked_add(mac_len)?;
    let header = adjusted_header(message, end)?;
    mac.update(&header);
    mac.update(message.get(HEADER_LEN..attr_offset)?);
    Some(mac)
}

/// HMAC-SHA1 for a MESSAGE-INTEGRITY attribute at `attr_offset` in `message`.
/// `None` when the offsets do not fit the message.
pub(crate) fn compute_sha1(key: &[u8], message: &[u8], attr_offset: usize) -> Option<[u8; 20]> {
    let mac = <Hmac<Sha1> as Mac>::new_from_slice(key).ok()?;
    let mac = mac_input(mac, message, attr_offset, SHA1_MAC_LEN)?;
    Some(mac.finalize().into_bytes().into())
}

/// HMAC-SHA256 for a MESSAGE-INTEGRITY-SHA256 attribute of `mac_len` bytes at
/// `attr_offset`; the full 32-byte MAC, to be truncated by the caller.
pub(crate) fn compute_sha256(
    key: &[u8],
    message: &[u8],
    attr_offset: usize,
    mac_len: usize,
) -> Option<[u8; 32]> {
    let mac = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    let mac = mac_input(mac, message, attr_offset, mac_len)?;
    Some(mac.finalize().into_bytes().into())
}

/// Verifies, in constant time, an HMAC-SHA1 `expected` for the attribute at
/// `attr_offset`.
pub(crate) fn verify_sha1(key: &[u8], message: &[u8], attr_offset: usize, expected: &[u8]) -> bool {
    let Ok(mac) = <Hmac<Sha1> as Mac>::new_from_slice(key) else {
        return false;
    };
    match mac_input(mac, message, attr_offset, expected.len()) {
        Some(mac) => mac.verify_slice(expected).is_ok(),
        None => false,
    }
}

/// Verifies, in constant time, a possibly truncated HMAC-SHA256 `expected`.
pub(crate) fn verify_sha256(
    key: &[u8],
    message: &[u8],
    attr_offset: usize,
    expected: &[u8],
) -> bool {
    let Ok(mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
        return false;
    };
    match mac_input(mac, message, attr_offset, expected.len()) {
        // verify_truncated_left compares the leftmost bytes in constant time and
        // refuses an empty tag.
        Some(mac) => mac.verify_truncated_left(expected).is_ok(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_term_keys() {
        // RFC 5769 §2.4 credentials (after SASLprep).
        let user = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
        let md5 = LongTermKey::md5(user, "example.org", "TheMatrIX");
        assert_eq!(md5.as_bytes().len(), 16);
        let sha = LongTermKey::sha256(user, "example.org", "TheMatrIX");
        assert_eq!(sha.as_bytes().len(), 32);
        assert_eq!(
            LongTermKey::for_algorithm(PasswordAlgorithm::MD5, user, "example.org", "TheMatrIX"),
            Some(md5)
        );
        assert_eq!(
            LongTermKey::for_algorithm(9, user, "example.org", "x"),
            None
        );
        // MD5("user:realm:pass"), computed independently.
        assert_eq!(
            hex::encode(LongTermKey::md5("user", "realm", "pass").as_bytes()),
            "8493fbc53ba582fb4c044c456bdc40eb"
        );
        assert_eq!(format!("{md5:?}"), "LongTermKey(16 bytes)");
    }

    #[test]
    fn fingerprint_is_crc32_xor_stun() {
        // CRC-32 check value of "123456789" is 0xCBF43926.
        assert_eq!(fingerprint(b"123456789"), 0xCBF4_3926 ^ FINGERPRINT_XOR);
    }

    #[test]
    fn mac_input_needs_a_header() {
        assert_eq!(compute_sha1(b"k", &[0; 10], 10), None);
        assert_eq!(compute_sha1(b"k", &[0; 20], 24), None);
        assert!(!verify_sha256(b"k", &[0; 20], 20, &[]));
    }
}
