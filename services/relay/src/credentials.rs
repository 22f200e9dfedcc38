//! TURN credentials derived from a shared secret — the "TURN REST API" scheme
//! (draft-uberti-behave-turn-rest, as coturn's `--use-auth-secret` implements it).
//!
//! The relay and whoever hands out credentials (the handshake service, the relay's own
//! `MintCredentials` RPC, a test) share one secret. Nobody stores credentials:
//!
//! ```text
//! username = "<expiry unix seconds>:<peer id>"
//! password = base64( HMAC-SHA1( shared secret, username ) )
//! ```
//!
//! The relay recomputes the password from the username it receives, so a username whose expiry
//! has passed, or whose password was made with another secret, is refused with 401. The peer id is
//! opaque to the scheme (quickP2P puts the 64-hex-digit peer id there; coturn's `turnutils_uclient
//! -W secret -u NAME` puts `NAME`); it must not be empty. The expiry is only checked when a new
//! allocation is made: an allocation outlives its credentials until its own lifetime runs out.
//!
//! Worked example (also a unit test):
//!
//! ```
//! use quickp2p_relay::credentials::{mint_credentials, password_for};
//! use std::time::Duration;
//!
//! let grant = mint_credentials(b"s3cret", "alice", Duration::from_secs(3600), 1_700_000_000)?;
//! assert_eq!(grant.username, "1700003600:alice");
//! assert_eq!(grant.password, password_for(b"s3cret", "1700003600:alice"));
//! assert_eq!(grant.password, "YAFdW/YDZewZsR1QSgUk2IrfbRI=");
//! # Ok::<(), quickp2p_relay::credentials::CredentialError>(())
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The secret shared by the relay and credential issuers. Its `Debug` form never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedSecret(Arc<[u8]>);

impl SharedSecret {
    /// A secret from its bytes (what `--shared-secret` holds, as UTF-8).
    pub fn new(secret: impl AsRef<[u8]>) -> SharedSecret {
        SharedSecret(Arc::from(secret.as_ref()))
    }

    /// The secret's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether the secret is empty (never valid).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedSecret({} bytes)", self.0.len())
    }
}

/// Credentials minted for one peer.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnCredentials {
    /// The TURN USERNAME: `"<expiry unix seconds>:<peer id>"`.
    pub username: String,
    /// The TURN password: base64 of HMAC-SHA1(secret, username).
    pub password: String,
    /// When the relay stops accepting them for new allocations (Unix seconds).
    pub expires_at_unix: u64,
}

impl fmt::Debug for TurnCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnCredentials")
            .field("username", &self.username)
            .field("password", &"..")
            .field("expires_at_unix", &self.expires_at_unix)
            .finish()
    }
}

/// Why credentials cannot be minted or a username is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The peer id is empty, contains ':' or a control character, or is longer than 256 bytes.
    #[error(
        "peer id {0:?} cannot go into a TURN username (1 to 256 bytes, no ':' or control characters)"
    )]
    InvalidPeer(String),
    /// A lifetime of zero.
    #[error("a credential lifetime must be at least one second")]
    ZeroLifetime,
    /// The username is not `<unix seconds>:<peer id>`.
    #[error("username {0:?} is not <expiry unix seconds>:<peer id>")]
    MalformedUsername(String),
}

/// A username of the scheme, split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestUsername<'a> {
    /// Expiry, Unix seconds.
    pub expires_at_unix: u64,
    /// The peer id part (everything after the first ':').
    pub peer: &'a str,
}

fn valid_peer(peer: &str) -> bool {
    !peer.is_empty()
        && peer.len() <= 256
        && !peer.contains(':')
        && !peer.chars().any(char::is_control)
}

/// Mints credentials for `peer`, valid for `ttl` from `now_unix` (Unix seconds).
pub fn mint_credentials(
    secret: &[u8],
    peer: &str,
    ttl: Duration,
    now_unix: u64,
) -> Result<TurnCredentials, CredentialError> {
    if !valid_peer(peer) {
        return Err(CredentialError::InvalidPeer(peer.to_owned()));
    }
    if ttl.as_secs() == 0 {
        return Err(CredentialError::ZeroLifetime);
    }
    let expires_at_unix = now_unix.saturating_add(ttl.as_secs());
    let username = format!("{expires_at_unix}:{peer}");
    let password = password_for(secret, &username);
    Ok(TurnCredentials {
        username,
        password,
        expires_at_unix,
    })
}

/// The password of `username`: base64 (standard alphabet, padded) of HMAC-SHA1(secret, username).
pub fn password_for(secret: &[u8], username: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail; an empty MAC never matches anything.
    let Ok(mut mac) = <Hmac<Sha1> as Mac>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Splits a username of the scheme. Accepts what coturn accepts: digits, ':', then a non-empty
/// rest.
pub fn parse_username(username: &str) -> Result<RestUsername<'_>, CredentialError> {
    let malformed = || CredentialError::MalformedUsername(username.chars().take(64).collect());
    let (expiry, peer) = username.split_once(':').ok_or_else(malformed)?;
    if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) || peer.is_empty() {
        return Err(malformed());
    }
    let expires_at_unix = expiry.parse().map_err(|_| malformed())?;
    Ok(RestUsername {
        expires_at_unix,
        peer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example() {
        let c =
            mint_credentials(b"s3cret", "alice", Duration::from_secs(3600), 1_700_000_000).unwrap();
        assert_eq!(c.username, "1700003600:alice");
        assert_eq!(c.expires_at_unix, 1_700_003_600);
        // echo -n 1700003600:alice | openssl dgst -sha1 -hmac s3cret -binary | base64
        assert_eq!(c.password, "YAFdW/YDZewZsR1QSgUk2IrfbRI=");
        assert!(!format!("{c:?}").contains(&c.password));
    }

    #[test]
    fn usernames_parse_and_bad_input_is_refused() {
        assert_eq!(
            parse_username("12:ab:c").unwrap(),
            RestUsername {
                expires_at_unix: 12,
                peer: "ab:c"
            }
        );
        for bad in ["", "12", "12:", ":x", "x1:y", "99999999999999999999999:y"] {
            assert!(parse_username(bad).is_err(), "{bad}");
        }
        assert_eq!(
            mint_credentials(b"k", "a:b", Duration::from_secs(1), 0),
            Err(CredentialError::InvalidPeer("a:b".into()))
        );
        assert_eq!(
            mint_credentials(b"k", "a", Duration::ZERO, 0),
            Err(CredentialError::ZeroLifetime)
        );
        assert_eq!(
            format!("{:?}", SharedSecret::new("abc")),
            "SharedSecret(3 bytes)"
        );
    }
}
