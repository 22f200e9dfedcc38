//! Stateless nonces (RFC 8489 §9.2): a nonce says until when it is valid and for which client IP,
//! under a MAC with the relay's key, so any worker (or replica sharing the key) can check it
//! without remembering what it handed out.
//!
//! ```text
//! "qp" | expiry, 8 hex digits (Unix seconds, 32 bits) | MAC, 16 hex digits
//! MAC = first 8 bytes of HMAC-SHA256(key, expiry as 4 big-endian bytes | client IP octets)
//! ```
//!
//! No "obMatJos2" security-feature cookie is sent, so RFC 8489 clients use the classic
//! MD5 long-term key and MESSAGE-INTEGRITY (§9.2.4), which is what RFC 5766 clients (coturn's
//! tools, browsers) do anyway.

use std::net::IpAddr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length of a nonce in bytes.
pub const NONCE_LEN: usize = 26;

fn mac(key: &[u8; 32], expiry: u32, ip: IpAddr) -> [u8; 8] {
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
        return [0; 8];
    };
    mac.update(&expiry.to_be_bytes());
    match ip.to_canonical() {
        IpAddr::V4(a) => mac.update(&a.octets()),
        IpAddr::V6(a) => mac.update(&a.octets()),
    }
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; 8];
    out.copy_from_slice(full.get(..8).unwrap_or(&[0; 8]));
    out
}

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        if let Some(pair) = out.get_mut(2 * i..2 * i + 2) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0xf)];
        }
    }
}

/// A nonce for `ip`, valid until `expiry_unix` (Unix seconds).
pub fn issue(key: &[u8; 32], ip: IpAddr, expiry_unix: u64) -> [u8; NONCE_LEN] {
    let expiry = u32::try_from(expiry_unix).unwrap_or(u32::MAX);
    let mut nonce = [0u8; NONCE_LEN];
    nonce[0] = b'q';
    nonce[1] = b'p';
    hex_into(&expiry.to_be_bytes(), &mut nonce[2..10]);
    hex_into(&mac(key, expiry, ip), &mut nonce[10..26]);
    nonce
}

/// Whether `nonce` is one of ours, for `ip`, and not expired at `now_unix`.
pub fn is_valid(key: &[u8; 32], nonce: &[u8], ip: IpAddr, now_unix: u64) -> bool {
    if nonce.len() != NONCE_LEN || !nonce.starts_with(b"qp") {
        return false;
    }
    let Some(expiry) = nonce
        .get(2..10)
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(|h| u32::from_str_radix(h, 16).ok())
    else {
        return false;
    };
    if u64::from(expiry) <= now_unix {
        return false;
    }
    let expected = issue(key, ip, u64::from(expiry));
    // constant time over the MAC digits
    expected
        .iter()
        .zip(nonce)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_check_key_ip_and_expiry() {
        let key = [7u8; 32];
        let ip: IpAddr = "198.51.100.20".parse().unwrap();
        let n = issue(&key, ip, 1000);
        assert!(n.starts_with(b"qp000003e8"));
        assert!(is_valid(&key, &n, ip, 999));
        assert!(!is_valid(&key, &n, ip, 1000), "expired");
        assert!(
            !is_valid(&key, &n, "198.51.100.21".parse().unwrap(), 10),
            "other IP"
        );
        assert!(!is_valid(&[8; 32], &n, ip, 10), "other key");
        let mut forged = n;
        forged[9] = b'f'; // later expiry, same MAC
        assert!(!is_valid(&key, &forged, ip, 10));
        assert!(!is_valid(&key, b"junk", ip, 10));
    }
}
