//! Applications (tenants) and their secrets, kept in the store's application records.
//!
//! An application's secrets live in [`AppRecord::secret_verifier`] as a small JSON document
//! ([`SecretBook`]). The login's app proof is an HMAC-SHA256 keyed with the secret's UTF-8 bytes
//! (`quickp2p_proto::login`), so verifying it needs the key itself: the "verifier" holds the
//! secret, and the store must be protected like any credential store (Redis ACLs, TLS, no
//! public exposure). A one-way verifier would need a different proof (e.g. a signature by an app
//! key); that would be a `quickp2p.v2` change. Revoking an application is final.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use quickp2p_proto::v1;
use quickp2p_store::{AppRecord, PageRequest, Store, StoreError};
use ring::rand::SecureRandom as _;
use serde::{Deserialize, Serialize};

use crate::CheckpointError;

/// Most active secrets an application may have at once.
pub const MAX_ACTIVE_SECRETS: usize = 4;

/// One secret of an application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSecret {
    /// The secret's id, e.g. `s1`.
    pub id: String,
    /// Operator's label.
    #[serde(default)]
    pub label: String,
    /// The secret text (the HMAC key of the login proof).
    pub secret: String,
    /// Creation time, Unix ms.
    pub created_ms: u64,
    /// Revocation time, Unix ms; 0 = active.
    #[serde(default)]
    pub revoked_ms: u64,
}

/// What [`AppRecord::secret_verifier`] holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretBook {
    /// Every secret, active and revoked, in creation order.
    pub secrets: Vec<AppSecret>,
    /// When the application was revoked, Unix ms; 0 = active.
    #[serde(default)]
    pub revoked_ms: u64,
}

impl SecretBook {
    fn decode(app: &AppRecord) -> Result<SecretBook, CheckpointError> {
        if app.secret_verifier.is_empty() {
            return Ok(SecretBook::default());
        }
        serde_json::from_str(&app.secret_verifier).map_err(|e| {
            CheckpointError::Corrupt(format!("secrets of application {}: {e}", app.id))
        })
    }

    fn encode(&self) -> String {
        // serialising plain strings and numbers cannot fail
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The active secrets.
    pub fn active(&self) -> impl Iterator<Item = &AppSecret> {
        self.secrets.iter().filter(|s| s.revoked_ms == 0)
    }
}

/// An application as the checkpoint sees it: the store record and its decoded secrets.
#[derive(Debug, Clone)]
pub struct Application {
    /// The store record.
    pub record: AppRecord,
    /// Its secrets.
    pub secrets: SecretBook,
}

impl Application {
    /// Whether peers may log in.
    pub fn is_active(&self) -> bool {
        !self.record.disabled && self.secrets.revoked_ms == 0
    }

    /// The protocol form (never includes secret values).
    pub fn to_proto(&self) -> v1::Application {
        let state = if self.is_active() {
            v1::ApplicationState::Active
        } else {
            v1::ApplicationState::Revoked
        };
        v1::Application {
            id: Some(v1::AppId::new(self.record.id.clone())),
            display_name: self.record.display_name.clone(),
            state: state as i32,
            created_at_unix_ms: unix_ms(self.record.created_at),
            revoked_at_unix_ms: self.secrets.revoked_ms,
            secrets: self
                .secrets
                .secrets
                .iter()
                .map(|s| v1::AppSecretSummary {
                    secret_id: s.id.clone(),
                    label: s.label.clone(),
                    created_at_unix_ms: s.created_ms,
                    revoked_at_unix_ms: s.revoked_ms,
                })
                .collect(),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// Checks the documented syntax of an application id: 1 to 64 bytes of lowercase ASCII letters,
/// digits and '-', starting with a letter or digit.
pub fn validate_app_id(id: &str) -> Result<(), CheckpointError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(CheckpointError::Invalid {
            field: "app_id",
            message: format!(
                "{id:?} is not an application id (1 to 64 of a-z, 0-9 and '-', not starting with '-')"
            ),
        })
    }
}

/// `n` random bytes from the system generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // SystemRandom only fails when the OS has no randomness at all: nothing can run then.
    if ring::rand::SystemRandom::new().fill(&mut out).is_err() {
        panic!("the operating system's random generator failed");
    }
    out
}

/// A fresh app secret: 43 characters of unpadded base64url (32 random bytes), never starting
/// with `-` (which a command line would take for an option: `--secret -x…` fails).
fn new_secret_text() -> String {
    loop {
        let text = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
        if !text.starts_with('-') {
            return text;
        }
    }
}

/// Application management on the store (used by the gRPC rpcs and the operator CLI).
#[derive(Debug, Clone)]
pub struct Apps {
    store: Store,
}

impl Apps {
    /// Management over `store`.
    pub fn new(store: Store) -> Apps {
        Apps { store }
    }

    /// The application, if it exists.
    pub async fn get(&self, id: &str) -> Result<Option<Application>, CheckpointError> {
        validate_app_id(id)?;
        match self.store.get_app(id).await? {
            Some(record) => Ok(Some(Application {
                secrets: SecretBook::decode(&record)?,
                record,
            })),
            None => Ok(None),
        }
    }

    async fn get_existing(&self, id: &str) -> Result<Application, CheckpointError> {
        self.get(id)
            .await?
            .ok_or_else(|| CheckpointError::NotFound(format!("no application {id:?}")))
    }

    /// Creates an application with its first secret (`id` empty: a generated one). Returns the
    /// application and the secret, shown only now.
    pub async fn create(
        &self,
        id: &str,
        display_name: &str,
        secret_label: &str,
    ) -> Result<(Application, v1::IssuedAppSecret), CheckpointError> {
        let id = if id.is_empty() {
            format!("app-{}", hex::encode(random_bytes::<5>()))
        } else {
            id.to_owned()
        };
        validate_app_id(&id)?;
        check_text("display_name", display_name, 128)?;
        check_text("secret_label", secret_label, 128)?;
        let now = SystemTime::now();
        let secret = AppSecret {
            id: "s1".to_owned(),
            label: secret_label.to_owned(),
            secret: new_secret_text(),
            created_ms: unix_ms(now),
            revoked_ms: 0,
        };
        let issued = v1::IssuedAppSecret {
            secret_id: secret.id.clone(),
            secret: secret.secret.clone(),
        };
        let secrets = SecretBook {
            secrets: vec![secret],
            revoked_ms: 0,
        };
        let record = AppRecord {
            id: id.clone(),
            display_name: display_name.to_owned(),
            secret_verifier: secrets.encode(),
            created_at: now,
            disabled: false,
        };
        match self.store.create_app(&record).await {
            Ok(()) => {}
            Err(StoreError::Conflict { .. }) => {
                return Err(CheckpointError::AlreadyExists(format!(
                    "application {id:?} exists (ids are never reused)"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        Ok((Application { record, secrets }, issued))
    }

    /// Applications ordered by id, one page at a time; revoked ones only when asked.
    pub async fn list(
        &self,
        cursor: Option<String>,
        limit: u32,
        include_revoked: bool,
    ) -> Result<(Vec<Application>, Option<String>), CheckpointError> {
        let page = PageRequest {
            cursor: cursor.filter(|c| !c.is_empty()).map(Into::into),
            limit,
        };
        let page = self.store.list_apps(page).await?;
        let mut apps = Vec::with_capacity(page.items.len());
        for record in page.items {
            let app = Application {
                secrets: SecretBook::decode(&record)?,
                record,
            };
            if include_revoked || app.is_active() {
                apps.push(app);
            }
        }
        Ok((apps, page.next.map(|c| c.into_string())))
    }

    /// Revokes an application (final): logins are refused from now on.
    pub async fn revoke(&self, id: &str) -> Result<Application, CheckpointError> {
        let mut app = self.get_existing(id).await?;
        if app.is_active() {
            app.secrets.revoked_ms = now_ms();
            app.record.disabled = true;
            app.record.secret_verifier = app.secrets.encode();
            self.store.put_app(&app.record).await?;
        }
        Ok(app)
    }

    /// Issues one more secret (at most [`MAX_ACTIVE_SECRETS`] active).
    pub async fn create_secret(
        &self,
        id: &str,
        label: &str,
    ) -> Result<v1::IssuedAppSecret, CheckpointError> {
        check_text("label", label, 128)?;
        let mut app = self.get_existing(id).await?;
        if !app.is_active() {
            return Err(CheckpointError::NotPermitted(format!(
                "application {id:?} is revoked"
            )));
        }
        if app.secrets.active().count() >= MAX_ACTIVE_SECRETS {
            return Err(CheckpointError::TooMany(format!(
                "application {id:?} has {MAX_ACTIVE_SECRETS} active secrets: revoke one first"
            )));
        }
        let secret = AppSecret {
            id: format!("s{}", app.secrets.secrets.len() + 1),
            label: label.to_owned(),
            secret: new_secret_text(),
            created_ms: now_ms(),
            revoked_ms: 0,
        };
        let issued = v1::IssuedAppSecret {
            secret_id: secret.id.clone(),
            secret: secret.secret.clone(),
        };
        app.secrets.secrets.push(secret);
        app.record.secret_verifier = app.secrets.encode();
        self.store.put_app(&app.record).await?;
        Ok(issued)
    }

    /// Revokes one secret; existing sessions are kept.
    pub async fn revoke_secret(
        &self,
        id: &str,
        secret_id: &str,
    ) -> Result<Application, CheckpointError> {
        let mut app = self.get_existing(id).await?;
        let secret = app
            .secrets
            .secrets
            .iter_mut()
            .find(|s| s.id == secret_id)
            .ok_or_else(|| {
                CheckpointError::NotFound(format!("application {id:?} has no secret {secret_id:?}"))
            })?;
        if secret.revoked_ms == 0 {
            secret.revoked_ms = now_ms();
            app.record.secret_verifier = app.secrets.encode();
            self.store.put_app(&app.record).await?;
        }
        Ok(app)
    }
}

fn check_text(field: &'static str, text: &str, max: usize) -> Result<(), CheckpointError> {
    if text.len() > max {
        return Err(CheckpointError::Invalid {
            field,
            message: format!("longer than {max} bytes"),
        });
    }
    Ok(())
}

/// The HMAC-SHA256 app proof of `transcript` under `secret` (what the SDK computes).
pub fn app_proof(secret: &str, transcript: &[u8]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, transcript);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Whether `proof` is the app proof of `transcript` under one of the active secrets (the one
/// named `secret_id`, or any when it is empty). Constant-time comparison.
pub fn verify_app_proof(
    book: &SecretBook,
    secret_id: &str,
    transcript: &[u8],
    proof: &[u8],
) -> bool {
    book.active()
        .filter(|s| secret_id.is_empty() || s.id == secret_id)
        .any(|s| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s.secret.as_bytes());
            ring::hmac::verify(&key, transcript, proof).is_ok()
        })
}

/// How long [`Duration`]s are in milliseconds, saturating.
pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_look_like_command_line_options() {
        // one in 64 raw encodings starts with '-': 2,000 draws would almost surely meet some
        for _ in 0..2_000 {
            let secret = new_secret_text();
            assert_eq!(secret.len(), 43, "{secret}");
            assert!(!secret.starts_with('-'), "{secret}");
        }
    }
}
