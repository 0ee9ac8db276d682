//! Bearer tokens: who is calling, and what they may do.
//!
//! Tokens are configured in the `[api]` section, each with a name, the SHA-256 of the token
//! (the token itself is never stored: `carepath token new` prints it once), its scopes, and
//! optionally the pathways it is restricted to — a Red Cross system's token sees and changes
//! only the Red Cross pathways' families.
//!
//! No token, or one nobody configured, is 401; a known token without the scope, or asking for
//! another organisation's pathway, is 403.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Api, Problem};
use crate::store::Storage;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Report events for families (`POST /v1/instances/{id}/events`).
    #[serde(rename = "events:write")]
    EventsWrite,
    /// Enrol families, hold and resume them, record opt-outs.
    #[serde(rename = "instances:write")]
    InstancesWrite,
    /// Read families, pathways, the outbox and metrics.
    #[serde(rename = "read")]
    Read,
    /// Everything.
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    /// The spelling in configuration and problem documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::EventsWrite => "events:write",
            Scope::InstancesWrite => "instances:write",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

/// One configured token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it: shown in access logs and as the source of what it changes.
    pub name: String,
    /// The token's SHA-256, in lower-case hex.
    pub sha256: String,
    /// What it may do.
    pub scopes: BTreeSet<Scope>,
    /// When given, the only pathways whose families it sees and changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pathways: Option<BTreeSet<String>>,
}

/// A person who signs in to the web view with a name and a password (`[[api.users]]`), with
/// scopes and pathways as a token has them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The name they sign in with, shown in the audit log.
    pub name: String,
    /// The password's Argon2id hash as a PHC string (`$argon2id$v=19$…`): `carepath user new`
    /// makes it. The password itself is never stored.
    pub argon2: String,
    /// What they may do.
    pub scopes: BTreeSet<Scope>,
    /// When given, the only pathways whose families they see and change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pathways: Option<BTreeSet<String>>,
}

/// The `[api]` section of the configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// The tokens.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// The web view's password users.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserConfig>,
}

/// Why the `[api]` section is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// A token has no name, or one with spaces or control characters.
    #[error(
        "[[api.tokens]] #{index}: name {name:?} must be 1 to 64 letters, digits, '-', '_' or '.'"
    )]
    BadName {
        /// Its position, from 1.
        index: usize,
        /// The name.
        name: String,
    },
    /// Two tokens share a name.
    #[error("[[api.tokens]] name \"{0}\" is used twice: names tell callers apart in logs")]
    DuplicateName(String),
    /// `sha256` is not 64 hex digits.
    #[error(
        "[[api.tokens]] \"{name}\": sha256 must be the token's SHA-256 in 64 hex digits (`carepath token new` prints it)"
    )]
    BadHash {
        /// The token's name.
        name: String,
    },
    /// Two entries carry the same token.
    #[error(
        "[[api.tokens]] \"{name}\" has the same sha256 as \"{other}\": give each system its own token"
    )]
    DuplicateHash {
        /// This one.
        name: String,
        /// The other.
        other: String,
    },
    /// No scopes.
    #[error(
        "[[api.tokens]] \"{0}\": scopes is empty; give at least one of events:write, instances:write, read, admin"
    )]
    NoScopes(String),
    /// A password user's entry is not what it should be.
    #[error("[[api.users]] \"{name}\": {reason}")]
    User {
        /// The user's name.
        name: String,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// A restriction names a pathway that is not loaded.
    #[error("[[api.tokens]] \"{name}\": pathway \"{pathway}\" is not loaded (loaded: {})", known.join(", "))]
    UnknownPathway {
        /// The token.
        name: String,
        /// The pathway.
        pathway: String,
        /// What is loaded.
        known: Vec<String>,
    },
}

/// A caller, once its token is recognised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    scopes: BTreeSet<Scope>,
    pathways: Option<BTreeSet<String>>,
}

impl Caller {
    /// Whether the token has `scope` (or `admin`).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }

    /// Whether the token has the `admin` scope.
    pub fn is_admin(&self) -> bool {
        self.scopes.contains(&Scope::Admin)
    }

    /// Refuses (403) unless the token is an admin of every pathway: what `action` does reaches
    /// all pathways, so a token limited to some may not.
    pub fn require_admin_of_every_pathway(&self, action: &str) -> Result<(), Problem> {
        self.require(Scope::Admin)?;
        if self.pathways.is_some() {
            return Err(Problem::forbidden(
                "insufficient-scope",
                &format!(
                    "{action} reaches every pathway: use an admin token that is not limited to some pathways"
                ),
            ));
        }
        Ok(())
    }

    /// Refuses (403) unless the token has `scope` (or `admin`).
    pub fn require(&self, scope: Scope) -> Result<(), Problem> {
        if self.has(scope) {
            return Ok(());
        }
        Err(Problem::new(
            StatusCode::FORBIDDEN,
            "insufficient-scope",
            &format!(
                "token \"{}\" lacks the scope \"{}\" (it has: {})",
                self.name,
                scope.as_str(),
                self.scopes
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }

    /// Whether the token may see and change families on `pathway`.
    pub fn may_use(&self, pathway: &str) -> bool {
        self.pathways.as_ref().is_none_or(|p| p.contains(pathway))
    }

    /// Refuses (403) a pathway outside the token's restriction.
    pub fn require_pathway(&self, pathway: &str) -> Result<(), Problem> {
        if self.may_use(pathway) {
            return Ok(());
        }
        Err(Problem::new(
            StatusCode::FORBIDDEN,
            "pathway-forbidden",
            &format!(
                "token \"{}\" is restricted to {}; pathway \"{pathway}\" is not among them",
                self.name,
                self.restriction().unwrap_or_default().join(", ")
            ),
        ))
    }

    /// The pathways the token is restricted to, if it is.
    pub fn restriction(&self) -> Option<Vec<String>> {
        self.pathways.as_ref().map(|p| p.iter().cloned().collect())
    }
}

/// The configured tokens, looked up by hash, and the web view's password users by name.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Arc<Caller>>,
    users: HashMap<String, (String, Arc<Caller>)>,
}

/// A name fit for logs: 1 to 64 letters, digits, `-`, `_` or `.`.
fn good_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// An Argon2id hash of no one's password, checked against when the name is unknown, so that
/// an unknown name takes as long to refuse as a wrong password.
static NOBODY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The Argon2id hash of `password`, as a PHC string, with a random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("no randomness for a salt: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn verify_password(phc: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(phc).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

impl Tokens {
    /// Checks the `[api]` section against the loaded pathways.
    pub fn new(config: &ApiConfig, pathways: &[String]) -> Result<Self, TokenError> {
        let mut by_hash: HashMap<[u8; 32], Arc<Caller>> = HashMap::new();
        let mut names = BTreeSet::new();
        for (i, t) in config.tokens.iter().enumerate() {
            if !good_name(&t.name) {
                return Err(TokenError::BadName {
                    index: i + 1,
                    name: t.name.clone(),
                });
            }
            if !names.insert(t.name.clone()) {
                return Err(TokenError::DuplicateName(t.name.clone()));
            }
            let hash = parse_hex(&t.sha256).ok_or_else(|| TokenError::BadHash {
                name: t.name.clone(),
            })?;
            if t.scopes.is_empty() {
                return Err(TokenError::NoScopes(t.name.clone()));
            }
            for p in t.pathways.iter().flatten() {
                if !pathways.contains(p) {
                    return Err(TokenError::UnknownPathway {
                        name: t.name.clone(),
                        pathway: p.clone(),
                        known: pathways.to_vec(),
                    });
                }
            }
            let caller = Arc::new(Caller {
                name: t.name.clone(),
                scopes: t.scopes.clone(),
                pathways: t.pathways.clone(),
            });
            if let Some(other) = by_hash.insert(hash, caller) {
                return Err(TokenError::DuplicateHash {
                    name: t.name.clone(),
                    other: other.name.clone(),
                });
            }
        }
        let mut users = HashMap::new();
        for u in &config.users {
            let refuse = |reason: &str| TokenError::User {
                name: u.name.clone(),
                reason: reason.to_string(),
            };
            if !good_name(&u.name) {
                return Err(refuse(
                    "the name must be 1 to 64 letters, digits, '-', '_' or '.'",
                ));
            }
            if !names.insert(u.name.clone()) {
                return Err(refuse(
                    "the name is used twice among [[api.tokens]] and [[api.users]]: names tell people apart in the audit log",
                ));
            }
            if argon2::password_hash::PasswordHash::new(&u.argon2)
                .map_or(true, |h| h.algorithm.as_str() != "argon2id")
            {
                return Err(refuse(
                    "argon2 must be an Argon2id hash ($argon2id$v=19$…): `carepath user new` makes one",
                ));
            }
            if u.scopes.is_empty() {
                return Err(refuse(
                    "scopes is empty; give at least one of events:write, instances:write, read, admin",
                ));
            }
            if let Some(p) = u.pathways.iter().flatten().find(|p| !pathways.contains(p)) {
                return Err(refuse(&format!(
                    "pathway \"{p}\" is not loaded (loaded: {})",
                    pathways.join(", ")
                )));
            }
            let caller = Arc::new(Caller {
                name: u.name.clone(),
                scopes: u.scopes.clone(),
                pathways: u.pathways.clone(),
            });
            users.insert(u.name.clone(), (u.argon2.clone(), caller));
        }
        Ok(Tokens { by_hash, users })
    }

    /// The user signing in with `name` and `password`, if both are right. Slow on purpose
    /// (Argon2id), and as slow for a name nobody has: run it off the async threads.
    pub fn sign_in(&self, name: &str, password: &str) -> Option<Arc<Caller>> {
        match self.users.get(name) {
            Some((phc, caller)) => verify_password(phc, password).then(|| caller.clone()),
            None => {
                let nobody = NOBODY.get_or_init(|| hash_password("nobody").unwrap_or_default());
                let _ = verify_password(nobody, password);
                None
            }
        }
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether any password users are configured.
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The caller presenting `headers`' bearer token.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Arc<Caller>, Problem> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(Problem::unauthorized(
                "no token: send `Authorization: Bearer TOKEN`",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Problem::unauthorized("the Authorization header must be `Bearer TOKEN`")
            })?;
        self.recognise(token)
            .ok_or_else(|| Problem::unauthorized("the token is not known: ask for a new one"))
    }

    /// The caller a token belongs to, if it is configured: for the web view's sign-in.
    pub fn recognise(&self, token: &str) -> Option<Arc<Caller>> {
        self.by_hash.get(&hash(token.trim())).cloned()
    }
}

impl<S: Storage> FromRequestParts<Api<S>> for Arc<Caller> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, api: &Api<S>) -> Result<Self, Problem> {
        let caller = api.tokens.caller(&parts.headers)?;
        // The access log names the caller; only the token's name, never the token.
        parts.extensions.insert(CallerName(caller.name.clone()));
        Ok(caller)
    }
}

/// The caller's name, left in the request's extensions for the access log.
#[derive(Clone, Debug)]
pub struct CallerName(pub String);

/// A new random token: `cp_` and 32 random bytes, base64url.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("cp_{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// A token's SHA-256.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A token's SHA-256 in hex, as the configuration holds it.
pub fn hash_hex(token: &str) -> String {
    hex(&hash(token))
}

/// Bytes in lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(token: &str, scopes: &[Scope], pathways: Option<&[&str]>) -> ApiConfig {
        ApiConfig {
            users: Vec::new(),
            tokens: vec![TokenConfig {
                name: "epj".into(),
                sha256: hash_hex(token),
                scopes: scopes.iter().copied().collect(),
                pathways: pathways.map(|p| p.iter().map(|s| s.to_string()).collect()),
            }],
        }
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = format!("Bearer {token}").parse() {
            h.insert(header::AUTHORIZATION, v);
        }
        h
    }

    #[test]
    fn a_configured_token_is_recognised_by_its_hash_only() {
        let token = new_token().expect("random");
        assert!(token.starts_with("cp_") && token.len() == 46);
        let tokens = Tokens::new(&config(&token, &[Scope::Read], None), &[]).expect("valid");
        let caller = tokens.caller(&bearer(&token)).expect("known");
        assert_eq!(caller.name, "epj");
        let other = new_token().expect("random");
        assert_eq!(
            tokens
                .caller(&bearer(&other))
                .map(|_| ())
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(tokens.caller(&HeaderMap::new()).unwrap_err().status, 401);
    }

    #[test]
    fn scopes_and_pathways_are_enforced_and_admin_has_every_scope() {
        let tokens = Tokens::new(
            &config("t", &[Scope::EventsWrite], Some(&["red-cross"])),
            &["red-cross".into(), "standard-track".into()],
        )
        .expect("valid");
        let caller = tokens.caller(&bearer("t")).expect("known");
        assert!(caller.require(Scope::EventsWrite).is_ok());
        let refused = caller.require(Scope::Read).unwrap_err();
        assert_eq!(
            (refused.status, refused.code.as_str()),
            (403, "insufficient-scope")
        );
        assert!(caller.require_pathway("red-cross").is_ok());
        assert_eq!(
            caller.require_pathway("standard-track").unwrap_err().status,
            403
        );

        let admin = Tokens::new(&config("a", &[Scope::Admin], None), &[]).expect("valid");
        let admin = admin.caller(&bearer("a")).expect("known");
        assert!(admin.require(Scope::Read).is_ok() && admin.may_use("anything"));
    }

    #[test]
    fn bad_configuration_is_refused_with_the_token_named() {
        let mut c = config("t", &[Scope::Read], Some(&["nowhere"]));
        assert!(matches!(
            Tokens::new(&c, &["standard-track".into()]),
            Err(TokenError::UnknownPathway { .. })
        ));
        c.tokens[0].pathways = None;
        c.tokens[0].sha256 = "abc".into();
        assert_eq!(
            Tokens::new(&c, &[]).unwrap_err(),
            TokenError::BadHash { name: "epj".into() }
        );
        let mut twice = config("t", &[Scope::Read], None);
        twice.tokens.push(twice.tokens[0].clone());
        assert_eq!(
            Tokens::new(&twice, &[]).unwrap_err(),
            TokenError::DuplicateName("epj".into())
        );
    }

    #[test]
    fn a_user_signs_in_with_the_password_only_and_a_bad_entry_is_refused() {
        let phc = hash_password("a long enough password").expect("hash");
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        let user = |name: &str, argon2: &str| UserConfig {
            name: name.into(),
            argon2: argon2.into(),
            scopes: [Scope::Read].into(),
            pathways: Some(["red-cross".to_string()].into()),
        };
        let mut c = config("t", &[Scope::Read], None);
        c.users.push(user("lina.rk", &phc));
        let tokens = Tokens::new(&c, &["red-cross".into()]).expect("valid");
        assert!(tokens.has_users());
        let caller = tokens
            .sign_in("lina.rk", "a long enough password")
            .expect("the right password");
        assert!(caller.may_use("red-cross") && !caller.may_use("standard-track"));
        assert!(
            tokens
                .sign_in("lina.rk", "a long enough passwore")
                .is_none()
        );
        assert!(tokens.sign_in("nobody", "a long enough password").is_none());

        let refused = |c: &ApiConfig| match Tokens::new(c, &["red-cross".into()]) {
            Err(TokenError::User { name, reason }) => format!("{name}: {reason}"),
            other => panic!("not refused as a user: {other:?}"),
        };
        let mut plain = config("t", &[Scope::Read], None);
        plain.users.push(user("lina.rk", "hunter2"));
        assert!(refused(&plain).contains("Argon2id"));
        let mut clash = config("t", &[Scope::Read], None);
        clash.users.push(user("epj", &phc));
        assert!(refused(&clash).contains("used twice"));
    }
}
