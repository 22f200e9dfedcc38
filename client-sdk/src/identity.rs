//! A peer's identity: an Ed25519 key pair. The peer id is the 32-byte public key
//! ([`PeerId`]), so anyone holding it can verify the peer's signatures without asking a
//! supernode.
//!
//! Key files are text: one line `quickp2p-ed25519-seed <64 hex digits>` (the 32-byte RFC 8032
//! seed). [`Identity::save`] writes them readable by the owner only.

use std::path::Path;

use quickp2p_proto::v1::PeerId;
use ring::rand::SecureRandom as _;
use ring::signature::KeyPair as _;

/// The first word of a key file.
pub const KEY_FILE_TAG: &str = "quickp2p-ed25519-seed";

/// Why a key could not be made, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The system's reason.
        source: std::io::Error,
    },
    /// The file is not a quickP2P key file.
    #[error("key file {path} is not a quickP2P key (expected `{KEY_FILE_TAG} <64 hex digits>`)")]
    Format {
        /// The file.
        path: String,
    },
    /// The system's random generator failed.
    #[error("the system random generator failed")]
    Random,
}

/// An Ed25519 key pair.
pub struct Identity {
    seed: [u8; 32],
    pair: ring::signature::Ed25519KeyPair,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id().to_string())
            .finish_non_exhaustive()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Identity {
        Identity::from_seed(self.seed)
    }
}

impl Identity {
    /// A new random key pair.
    pub fn generate() -> Result<Identity, IdentityError> {
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| IdentityError::Random)?;
        Ok(Identity::from_seed(seed))
    }

    /// The key pair of a 32-byte RFC 8032 seed.
    pub fn from_seed(seed: [u8; 32]) -> Identity {
        // any 32 bytes are a valid Ed25519 seed: ring only fails on a wrong length
        #[allow(clippy::expect_used)]
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
            .expect("a 32-byte seed is always accepted");
        Identity { seed, pair }
    }

    /// The raw public key.
    pub fn public_key(&self) -> [u8; 32] {
        let mut key = [0u8; 32];
        key.copy_from_slice(self.pair.public_key().as_ref());
        key
    }

    /// The peer id: the public key.
    pub fn peer_id(&self) -> PeerId {
        PeerId::from_public_key(self.public_key())
    }

    /// Signs `message` (64-byte Ed25519 signature).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut sig = [0u8; 64];
        sig.copy_from_slice(self.pair.sign(message).as_ref());
        sig
    }

    /// The key file text.
    pub fn to_file_text(&self) -> String {
        format!("{KEY_FILE_TAG} {}\n", hex::encode(self.seed))
    }

    /// Parses key file text.
    pub fn from_file_text(text: &str, path: &str) -> Result<Identity, IdentityError> {
        let bad = || IdentityError::Format {
            path: path.to_owned(),
        };
        let mut words = text.split_whitespace();
        if words.next() != Some(KEY_FILE_TAG) {
            return Err(bad());
        }
        let seed: [u8; 32] = hex::decode(words.next().ok_or_else(bad)?)
            .map_err(|_| bad())?
            .try_into()
            .map_err(|_| bad())?;
        Ok(Identity::from_seed(seed))
    }

    /// Reads a key file.
    pub fn load(path: impl AsRef<Path>) -> Result<Identity, IdentityError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| IdentityError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Identity::from_file_text(&text, &path.display().to_string())
    }

    /// Writes a key file (mode 0600 on Unix); refuses to overwrite an existing file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), IdentityError> {
        use std::io::Write as _;
        let path = path.as_ref();
        let io = |source| IdentityError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(io)?;
        file.write_all(self.to_file_text().as_bytes()).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trip_and_signatures_verify() {
        let id = Identity::generate().unwrap();
        let back = Identity::from_file_text(&id.to_file_text(), "x").unwrap();
        assert_eq!(back.peer_id(), id.peer_id());
        let sig = id.sign(b"hello");
        let key =
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, id.public_key());
        key.verify(b"hello", &sig).unwrap();
        assert!(Identity::from_file_text("nope", "x").is_err());
    }
}
