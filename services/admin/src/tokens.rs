//! Admin bearer tokens: the token file, and the check every data rpc makes.
//!
//! **File format** (`QP_ADMIN_TOKENS_FILE`, typically a mounted Kubernetes Secret): one token per
//! line, three fields separated by spaces or tabs:
//!
//! ```text
//! # ACCESS  NAME        TOKEN
//! write     ops-alice   0f6c1e0b6a3a4d1c9a7e55d0c2f4a8b1
//! read      support     5b8a61d4f0e94e6c8d2b7a3f9c1e0d42
//! ```
//!
//! - `ACCESS` is `read` (List, Get, Query and statistics rpcs) or `write` (everything, including
//!   kicks, broadcasts and application changes);
//! - `NAME` (1 to 64 of `A-Z a-z 0-9 . _ -`) is what audit events record as the actor — the token
//!   itself is never logged or stored;
//! - `TOKEN` is 24 to 512 printable ASCII characters without spaces (e.g. 32 random bytes in hex:
//!   `openssl rand -hex 32`).
//!
//! Blank lines and lines starting with `#` are ignored. Names and tokens must be unique. A file
//! without any token, or with a malformed line, is refused at start-up with the line number.
//!
//! **Check.** Callers send the metadata `authorization: Bearer TOKEN`. The token's SHA-256 is
//! compared with every configured token's SHA-256 without early exit, so the time taken does not
//! depend on which token (or how much of one) matched. No or an unknown token: `UNAUTHENTICATED`;
//! a `read` token on a write rpc: `PERMISSION_DENIED`.

use std::fmt;
use std::path::Path;

use crate::error::AdminError;

/// Shortest accepted token, in characters.
pub const MIN_TOKEN_LEN: usize = 24;
/// Longest accepted token, in characters.
pub const MAX_TOKEN_LEN: usize = 512;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Read-only rpcs.
    Read,
    /// Every rpc.
    Write,
}

impl Access {
    /// `read` or `write`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

/// One configured token (only its hash is kept).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    name: String,
    access: Access,
    hash: [u8; 32],
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminToken")
            .field("name", &self.name)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

impl AdminToken {
    /// A token named `name` with `access`; refused if the name or token is malformed.
    pub fn new(name: &str, access: Access, token: &str) -> Result<AdminToken, String> {
        check_name(name)?;
        check_token(token)?;
        Ok(AdminToken {
            name: name.to_owned(),
            access,
            hash: sha256(token.as_bytes()),
        })
    }

    /// The token's name (the audit actor).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it may do.
    pub fn access(&self) -> Access {
        self.access
    }
}

/// Who is calling: the matched token's name and access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// Its access.
    pub access: Access,
}

/// The configured tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    tokens: Vec<AdminToken>,
}

/// Why a token file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("cannot read the admin token file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The system's reason.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("admin token file {path}, line {line}: {message}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong (never the token itself).
        message: String,
    },
    /// The file holds no token.
    #[error(
        "admin token file {path} holds no token (lines `read|write NAME TOKEN`): the admin API would refuse everyone"
    )]
    Empty {
        /// The file.
        path: String,
    },
}

impl Tokens {
    /// Tokens from a list (refuses duplicate names or tokens).
    pub fn from_tokens(tokens: Vec<AdminToken>) -> Result<Tokens, String> {
        for (i, a) in tokens.iter().enumerate() {
            for b in &tokens[..i] {
                if a.name == b.name {
                    return Err(format!("the name {:?} is used twice", a.name));
                }
                if a.hash == b.hash {
                    return Err(format!(
                        "tokens {:?} and {:?} are the same token",
                        b.name, a.name
                    ));
                }
            }
        }
        Ok(Tokens { tokens })
    }

    /// Parses the token file format (see the module documentation); `path` names the file in
    /// errors.
    pub fn parse(text: &str, path: &str) -> Result<Tokens, TokenFileError> {
        let mut tokens = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |message: String| TokenFileError::Line {
                path: path.to_owned(),
                line: i + 1,
                message,
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [access, name, token] = fields[..] else {
                return Err(bad(format!(
                    "expected three fields `read|write NAME TOKEN`, found {}",
                    fields.len()
                )));
            };
            let access = match access {
                "read" => Access::Read,
                "write" => Access::Write,
                other => {
                    return Err(bad(format!(
                        "access {other:?} is neither `read` nor `write`"
                    )));
                }
            };
            tokens.push(AdminToken::new(name, access, token).map_err(bad)?);
        }
        if tokens.is_empty() {
            return Err(TokenFileError::Empty {
                path: path.to_owned(),
            });
        }
        Tokens::from_tokens(tokens).map_err(|message| TokenFileError::Line {
            path: path.to_owned(),
            line: 0,
            message,
        })
    }

    /// Reads and parses a token file.
    pub fn load(path: &Path) -> Result<Tokens, TokenFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: shown.clone(),
            source,
        })?;
        Tokens::parse(&text, &shown)
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there is none (then every data rpc is refused).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The caller holding `token`, compared in constant time over every configured token.
    pub fn find(&self, token: &str) -> Option<Caller> {
        let hash = sha256(token.as_bytes());
        let mut found = None;
        for t in &self.tokens {
            let diff = t
                .hash
                .iter()
                .zip(hash.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(Caller {
                    name: t.name.clone(),
                    access: t.access,
                });
            }
        }
        found
    }

    /// Checks the `authorization` metadata for `need`.
    pub fn authorize(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        need: Access,
    ) -> Result<Caller, AdminError> {
        let header = metadata
            .get("authorization")
            .ok_or_else(|| {
                AdminError::Unauthenticated("missing `authorization: Bearer TOKEN` metadata".into())
            })?
            .to_str()
            .map_err(|_| AdminError::Unauthenticated("malformed authorization metadata".into()))?;
        let token = match header.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Err(AdminError::Unauthenticated(
                    "the authorization metadata must be `Bearer TOKEN`".into(),
                ));
            }
        };
        let caller = self
            .find(token)
            .ok_or_else(|| AdminError::Unauthenticated("unknown admin token".into()))?;
        if caller.access < need {
            return Err(AdminError::PermissionDenied {
                caller: caller.name,
                message: "this token is read-only; the call needs a read-write token".into(),
            });
        }
        Ok(caller)
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name {name:?} must be 1 to 64 of A-Z, a-z, 0-9, '.', '_' and '-'"
        ))
    }
}

fn check_token(token: &str) -> Result<(), String> {
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "the token is {} characters long; at least {MIN_TOKEN_LEN} are required",
            token.len()
        ));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(format!(
            "the token is longer than {MAX_TOKEN_LEN} characters"
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token must be printable ASCII without spaces".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataMap;

    const W: &str = "write-token-0123456789abcdef";
    const R: &str = "read-token-0123456789abcdef0";

    fn tokens() -> Tokens {
        Tokens::parse(
            &format!("# comment\n\nwrite ops {W}\n  read\tsupport {R}  \n"),
            "t",
        )
        .unwrap()
    }

    fn md(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().unwrap());
        m
    }

    #[test]
    fn parses_and_matches() {
        let t = tokens();
        assert_eq!(t.len(), 2);
        assert_eq!(t.find(W).unwrap().name, "ops");
        assert_eq!(t.find(R).unwrap().access, Access::Read);
        assert!(t.find("nope-nope-nope-nope-nope-nope").is_none());
        assert!(t.find(&W[..W.len() - 1]).is_none());
    }

    #[test]
    fn authorizes_by_access() {
        let t = tokens();
        let ok = t
            .authorize(&md(&format!("Bearer {W}")), Access::Write)
            .unwrap();
        assert_eq!(ok.name, "ops");
        assert!(
            t.authorize(&md(&format!("bearer {R}")), Access::Read)
                .is_ok()
        );
        assert!(matches!(
            t.authorize(&md(&format!("Bearer {R}")), Access::Write),
            Err(AdminError::PermissionDenied { .. })
        ));
        assert!(matches!(
            t.authorize(&MetadataMap::new(), Access::Read),
            Err(AdminError::Unauthenticated(_))
        ));
        assert!(matches!(
            t.authorize(&md(W), Access::Read),
            Err(AdminError::Unauthenticated(_))
        ));
        assert!(matches!(
            t.authorize(&md("Bearer wrong-token-0123456789abcdef"), Access::Read),
            Err(AdminError::Unauthenticated(_))
        ));
    }

    #[test]
    fn refuses_bad_files() {
        let err = |text: &str| Tokens::parse(text, "f").unwrap_err().to_string();
        assert!(err("").contains("holds no token"));
        assert!(err("# only a comment\n").contains("holds no token"));
        assert!(err("write ops short").contains("line 1"));
        assert!(err("write ops short").contains("at least 24"));
        assert!(err(&format!("admin ops {W}")).contains("neither"));
        assert!(err(&format!("write {W}")).contains("three fields"));
        assert!(err(&format!("write o/ps {W}")).contains("name"));
        assert!(err(&format!("write a {W}\nread b {W}")).contains("same token"));
        assert!(err(&format!("write a {W}\nread a {R}")).contains("twice"));
        // the token never appears in an error
        assert!(!err(&format!("write a {W}\nread b {W}")).contains(W));
    }
}
