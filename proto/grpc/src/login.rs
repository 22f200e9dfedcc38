//! The login transcript: the exact bytes a peer signs with its Ed25519 key and MACs with its app
//! secret when it answers a gateway's challenge (see `Login` in `peer.proto`). The SDK builds it to
//! sign; the checkpoint builds it to verify; both must use this one function.
//!
//! Layout, with `lp(x)` = `x.len()` as 2 bytes big-endian followed by `x`:
//! `"quickp2p/1 login" 0x00 lp(challenge) lp(app_id) lp(gateway_id) lp(public_key)`.
//! Every field is length-prefixed, so no two different inputs give the same transcript.

/// The domain-separation prefix of the login transcript (includes the trailing NUL byte).
pub const LOGIN_CONTEXT: &[u8] = b"quickp2p/1 login\0";

/// A transcript field was longer than the 2-byte length prefix can express.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("login transcript field `{field}` is {len} bytes, more than 65535")]
pub struct TranscriptFieldTooLong {
    /// Which field: "challenge", "app_id", "gateway_id" or "public_key".
    pub field: &'static str,
    /// Its length in bytes.
    pub len: usize,
}

/// Builds the login transcript for a challenge, an application id, the gateway id from `Welcome`
/// and the peer's Ed25519 public key.
pub fn login_transcript(
    challenge: &[u8],
    app_id: &str,
    gateway_id: &str,
    public_key: &[u8],
) -> Result<Vec<u8>, TranscriptFieldTooLong> {
    let fields: [(&'static str, &[u8]); 4] = [
        ("challenge", challenge),
        ("app_id", app_id.as_bytes()),
        ("gateway_id", gateway_id.as_bytes()),
        ("public_key", public_key),
    ];
    let len = LOGIN_CONTEXT.len() + fields.iter().map(|(_, f)| 2 + f.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(LOGIN_CONTEXT);
    for (field, bytes) in fields {
        let prefix = u16::try_from(bytes.len()).map_err(|_| TranscriptFieldTooLong {
            field,
            len: bytes.len(),
        })?;
        out.extend_from_slice(&prefix.to_be_bytes());
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_snapshot() {
        let t = login_transcript(&[0xAA; 3], "app", "gw-1", &[0x01, 0x02]).unwrap();
        let mut expected = b"quickp2p/1 login\0".to_vec();
        expected.extend_from_slice(&[0, 3, 0xAA, 0xAA, 0xAA]);
        expected.extend_from_slice(&[0, 3, b'a', b'p', b'p']);
        expected.extend_from_slice(&[0, 4, b'g', b'w', b'-', b'1']);
        expected.extend_from_slice(&[0, 2, 0x01, 0x02]);
        assert_eq!(t, expected);
    }

    #[test]
    fn fields_cannot_run_into_each_other() {
        let a = login_transcript(b"ab", "c", "", b"").unwrap();
        let b = login_transcript(b"a", "bc", "", b"").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn oversized_field_is_refused() {
        let long = vec![0u8; 70_000];
        let err = login_transcript(&long, "a", "g", b"k").unwrap_err();
        assert_eq!(err.field, "challenge");
        assert_eq!(err.len, 70_000);
    }
}
