//! Who may use the server, and for what: users with a role, authenticated by a bearer token
//! over HTTP and by a SCRAM-SHA-256 password over pgwire.
//!
//! ```toml
//! [[auth.users]]
//! name = "dashboards"
//! role = "reader"            # reader | writer | admin
//! password = "SCRAM-SHA-256$4096:…$…:…"   # pgwire; `aimatrix auth password` makes one
//! tokens = ["9f86d081…"]     # HTTP bearer tokens, as SHA-256 in hex; `aimatrix auth token` makes one
//! ```
//!
//! With no user configured, nothing is authenticated and both servers listen on loopback
//! only ([`crate::config::ServeConfig::check_listen`]). With users, every request is:
//!
//! - **HTTP**: `Authorization: Bearer TOKEN` (RFC 6750) on every route but `/healthz` and
//!   `/readyz` (probes, which tell nothing). A missing or unknown token is answered 401 with
//!   `WWW-Authenticate: Bearer realm="aimatrix"`; a known token whose user's role is too small
//!   for the route is answered 403.
//! - **pgwire**: SCRAM-SHA-256 (RFC 5802, RFC 7677; PostgreSQL's `password_encryption =
//!   scram-sha-256`). A wrong password or an unknown user fails as PostgreSQL fails them:
//!   `28P01 password authentication failed for user "…"`, after the whole exchange (an unknown
//!   user gets a made-up salt, so a client cannot tell which users exist). A statement beyond
//!   the session's role gets `42501 permission denied`.
//!
//! # Roles
//! | role | may |
//! |---|---|
//! | `reader` | query (`SELECT`, `SHOW`, …), subscribe, read jobs, the catalog, metrics and the OpenAPI document |
//! | `writer` | also push records (`POST /v1/ingest/…`) |
//! | `admin` | also submit and cancel jobs, and `CREATE`/`DROP MATERIALIZED VIEW` |
//!
//! # Secrets
//! Only hashes are configured: a password as PostgreSQL stores it (`pg_authid.rolpassword`:
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64), from which no one can
//! log in; a token as the SHA-256 of its text (tokens are 32 random bytes, so a fast hash is
//! enough, as for GitHub's and Materialize's app passwords). A presented token is hashed and
//! compared with every configured hash in constant time (`subtle`). Neither tokens nor
//! passwords are logged; a refusal is logged with the user's name, when known, and the route.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use pgwire::api::auth::sasl::scram::{ScramSecret, gen_salted_password};
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// What a user may do; each role may do all that the ones before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Query, subscribe, read jobs, the catalog and metrics.
    Reader,
    /// Also push records into push sources.
    Writer,
    /// Also submit and cancel jobs, create and drop views.
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        })
    }
}

/// `[auth]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The users (`[[auth.users]]`). None (the default): no authentication, loopback only.
    pub users: Vec<UserConfig>,
}

/// `[[auth.users]]`: one user.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user's name: pgwire's user name, and the name logged for its requests.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Its pgwire password as a SCRAM-SHA-256 verifier (PostgreSQL's format; `aimatrix auth
    /// password` makes one). None: it cannot log in over pgwire.
    #[serde(default)]
    pub password: Option<String>,
    /// Its HTTP bearer tokens, each as the SHA-256 of the token in hex (`aimatrix auth token`
    /// makes one). Several, so that a token can be rotated without downtime.
    #[serde(default)]
    pub tokens: Vec<String>,
}

impl std::fmt::Debug for UserConfig {
    /// Names and roles only: hashes of secrets are not printed either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

/// An authenticated user: its name and role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The user's name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

impl Principal {
    /// The error message for an action `what` that needs role `needed`, or `None` when this
    /// user's role allows it.
    pub fn denied(&self, needed: Role, what: &str) -> Option<String> {
        (self.role < needed).then(|| {
            format!("permission denied: {what} needs role {needed}; user `{}` has role {}", self.name, self.role)
        })
    }
}

/// A SCRAM-SHA-256 verifier (RFC 5802 §3): what the server keeps of a password.
#[derive(Clone)]
struct Verifier {
    iterations: usize,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl Verifier {
    fn secret(&self) -> ScramSecret {
        ScramSecret::Verifier {
            salt: self.salt.clone(),
            iterations: self.iterations,
            stored_key: self.stored_key.clone(),
            server_key: self.server_key.clone(),
        }
    }
}

/// Parses PostgreSQL's `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (salt and
/// keys in standard base64; keys of 32 bytes).
fn parse_verifier(text: &str) -> Result<Verifier, String> {
    let shape = "a SCRAM-SHA-256 verifier: SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> (`aimatrix auth \
                 password` makes one)";
    let rest = text.trim().strip_prefix("SCRAM-SHA-256$").ok_or_else(|| format!("not {shape}"))?;
    let (params, keys) = rest.split_once('$').ok_or_else(|| format!("not {shape}"))?;
    let (iterations, salt) = params.split_once(':').ok_or_else(|| format!("not {shape}"))?;
    let (stored, server) = keys.split_once(':').ok_or_else(|| format!("not {shape}"))?;
    let iterations: usize = iterations.parse().map_err(|_| format!("not {shape}: `{iterations}` is no number"))?;
    if iterations < 4096 {
        return Err(format!("{iterations} iterations: RFC 7677 asks for at least 4096"));
    }
    let decode = |what: &str, b64: &str| STANDARD.decode(b64).map_err(|e| format!("not {shape}: its {what}: {e}"));
    let (salt, stored_key, server_key) =
        (decode("salt", salt)?, decode("StoredKey", stored)?, decode("ServerKey", server)?);
    if stored_key.len() != 32 || server_key.len() != 32 || salt.is_empty() {
        return Err(format!("not {shape}: the keys must be 32 bytes and the salt not empty"));
    }
    Ok(Verifier { iterations, salt, stored_key, server_key })
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), message).as_ref().to_vec()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().try_into().expect("32 bytes")
}

/// The verifier of `password` with this salt and iteration count, in PostgreSQL's format
/// (RFC 5802 §3: `SaltedPassword = Hi(SASLprep(password), salt, i)`, `StoredKey =
/// SHA-256(HMAC(SaltedPassword, "Client Key"))`, `ServerKey = HMAC(SaltedPassword, "Server
/// Key")`).
pub fn verifier(password: &str, salt: &[u8], iterations: usize) -> String {
    let salted = gen_salted_password(password, salt, iterations);
    let stored_key = sha256(&hmac_sha256(&salted, b"Client Key"));
    let server_key = hmac_sha256(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    )
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0; N];
    ring::rand::SystemRandom::new().fill(&mut bytes).expect("the system's random number generator works");
    bytes
}

/// A new verifier of `password`: a random 16-byte salt, 4,096 iterations (PostgreSQL's
/// defaults).
pub fn hash_password(password: &str) -> String {
    verifier(password, &random::<16>(), 4096)
}

/// A new bearer token (`amx_` and 32 random bytes in URL-safe base64) and its SHA-256 in hex,
/// which is what the configuration keeps.
pub fn new_token() -> (String, String) {
    let token = format!("amx_{}", URL_SAFE_NO_PAD.encode(random::<32>()));
    let hash = hash_token(&token);
    (token, hash)
}

/// The SHA-256 of a token, in lower-case hex: how `tokens` names it.
pub fn hash_token(token: &str) -> String {
    sha256(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The configured users, ready to check credentials against.
pub struct Authenticator {
    /// Each user and its verifier.
    users: Vec<(Principal, Option<Verifier>)>,
    /// Each token's SHA-256, with its user (an index into `users`).
    tokens: Vec<([u8; 32], usize)>,
    /// The key of the made-up salts of unknown users.
    decoy: [u8; 32],
    /// The iteration count of made-up verifiers.
    decoy_iterations: usize,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("users", &self.users.len()).finish_non_exhaustive()
    }
}

impl Authenticator {
    /// The users of `config`; `None` when there are none (authentication off).
    ///
    /// # Errors
    /// A user without a name, named twice, or with neither password nor token; a password
    /// that is no SCRAM-SHA-256 verifier (a clear-text password is refused, and the message
    /// says how to hash it); a token hash that is not 64 hex digits, or given twice. Each
    /// message names the user, never the secret.
    pub fn new(config: &AuthConfig) -> Result<Option<Authenticator>, String> {
        if config.users.is_empty() {
            return Ok(None);
        }
        let mut users = Vec::new();
        let mut tokens = Vec::new();
        for (i, user) in config.users.iter().enumerate() {
            let name = user.name.trim();
            if name.is_empty() {
                return Err(format!("auth.users[{i}] has no name"));
            }
            if users.iter().any(|(p, _): &(Principal, _)| p.name == name) {
                return Err(format!("auth.users: `{name}` is named twice"));
            }
            if user.password.is_none() && user.tokens.is_empty() {
                return Err(format!("auth.users `{name}`: give a password (pgwire) or tokens (HTTP), or both"));
            }
            let verifier = match &user.password {
                Some(p) => Some(parse_verifier(p).map_err(|e| format!("auth.users `{name}`: password is {e}"))?),
                None => None,
            };
            for hash in &user.tokens {
                let hash = hash.trim().to_ascii_lowercase();
                let bytes: Option<Vec<u8>> = (hash.len() == 64)
                    .then(|| (0..32).map(|k| u8::from_str_radix(&hash[2 * k..2 * k + 2], 16).ok()).collect())
                    .flatten();
                let Some(bytes) = bytes else {
                    return Err(format!(
                        "auth.users `{name}`: a token must be given as its SHA-256 in hex (64 digits; `aimatrix auth \
                         token` makes a token and its hash)"
                    ));
                };
                let bytes: [u8; 32] = bytes.try_into().expect("32 bytes");
                if tokens.iter().any(|(t, _)| *t == bytes) {
                    return Err(format!("auth.users `{name}`: a token hash is given twice"));
                }
                tokens.push((bytes, users.len()));
            }
            users.push((Principal { name: name.to_owned(), role: user.role }, verifier));
        }
        // The made-up salts of unknown users come from a key derived from the configured
        // secrets, so they stay the same across restarts (a salt that changed at a restart
        // while real users' stay would tell them apart); random only with no secret at all.
        let mut material = b"aimatrix decoy salts".to_vec();
        for (_, verifier) in &users {
            if let Some(v) = verifier {
                material.extend_from_slice(&v.stored_key);
                material.extend_from_slice(&v.server_key);
            }
        }
        for (hash, _) in &tokens {
            material.extend_from_slice(hash);
        }
        let decoy = if material.len() > 20 { sha256(&material) } else { random() };
        // Made-up verifiers use the iteration count real users have most.
        let mut counts = std::collections::BTreeMap::new();
        for (_, verifier) in &users {
            if let Some(v) = verifier {
                *counts.entry(v.iterations).or_insert(0_usize) += 1;
            }
        }
        let decoy_iterations = counts.iter().max_by_key(|(_, n)| **n).map_or(4096, |(i, _)| *i);
        Ok(Some(Authenticator { users, tokens, decoy, decoy_iterations }))
    }

    /// The user whose token this is: its SHA-256 compared with every configured hash in
    /// constant time (no early exit, so the time taken does not tell how close a guess was).
    pub fn bearer(&self, token: &str) -> Option<&Principal> {
        let presented = sha256(token.as_bytes());
        let mut found = None;
        for (hash, user) in &self.tokens {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(*user);
            }
        }
        found.map(|i| &self.users[i].0)
    }

    /// The SCRAM secret of pgwire user `name` and the user it authenticates. A user that does
    /// not exist, or has no password, gets a made-up verifier (a salt that is the same at
    /// every attempt, keys no password matches), so the exchange runs to its end and fails
    /// as a wrong password does.
    fn scram_secret(&self, name: &str) -> (ScramSecret, Option<Principal>) {
        if let Some((principal, Some(verifier))) = self.users.iter().find(|(p, _)| p.name == name) {
            return (verifier.secret(), Some(principal.clone()));
        }
        let salt = hmac_sha256(&self.decoy, name.as_bytes())[..16].to_vec();
        let decoy = Verifier {
            iterations: self.decoy_iterations,
            salt,
            stored_key: hmac_sha256(&self.decoy, b"stored")[..32].to_vec(),
            server_key: hmac_sha256(&self.decoy, b"server")[..32].to_vec(),
        };
        (decoy.secret(), None)
    }
}

/// The [`Authenticator`] as pgwire's source of SCRAM secrets.
#[derive(Debug, Clone)]
pub(crate) struct ScramSource(pub(crate) Arc<Authenticator>);

#[async_trait::async_trait]
impl pgwire::api::auth::AuthSource<Principal> for ScramSource {
    async fn get_password(
        &self,
        login: &pgwire::api::auth::LoginInfo,
    ) -> pgwire::error::PgWireResult<pgwire::api::auth::Password> {
        // Only SCRAM is offered, which asks `get_scram_secret`.
        Err(pgwire::error::PgWireError::InvalidPassword(login.user().unwrap_or_default().to_owned()))
    }

    async fn get_scram_secret(
        &self,
        login: &pgwire::api::auth::LoginInfo,
    ) -> pgwire::error::PgWireResult<(ScramSecret, Option<Principal>)> {
        Ok(self.0.scram_secret(login.user().unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verifier of password `pencil` with RFC 7677 §3's salt and 4,096 iterations, as
    /// Python's `hashlib.pbkdf2_hmac` and `hmac` compute it (RFC 5802 §3's formulas):
    /// PostgreSQL stores the same text for this password and salt.
    #[test]
    fn a_verifier_is_postgresql_s() {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("base64");
        assert_eq!(
            verifier("pencil", &salt, 4096),
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:\
             wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
    }

    /// A token's hash is its SHA-256 in hex (FIPS 180-4's test vector for `abc`).
    #[test]
    fn a_token_hash_is_its_sha256() {
        assert_eq!(hash_token("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    fn config(users: &[(&str, Role, Option<String>, Vec<String>)]) -> AuthConfig {
        AuthConfig {
            users: users
                .iter()
                .map(|(name, role, password, tokens)| UserConfig {
                    name: name.to_string(),
                    role: *role,
                    password: password.clone(),
                    tokens: tokens.clone(),
                })
                .collect(),
        }
    }

    #[test]
    fn tokens_find_their_user_and_nothing_else() {
        let (a, a_hash) = new_token();
        let (b, b_hash) = new_token();
        let auth = Authenticator::new(&config(&[
            ("ann", Role::Reader, None, vec![a_hash.to_uppercase()]),
            ("bob", Role::Admin, Some(hash_password("x")), vec![b_hash]),
        ]))
        .expect("valid")
        .expect("on");
        assert_eq!(auth.bearer(&a).map(|p| p.name.as_str()), Some("ann"));
        assert_eq!(auth.bearer(&b).map(|p| (p.name.as_str(), p.role)), Some(("bob", Role::Admin)));
        assert_eq!(auth.bearer(&a[..a.len() - 1]), None);
        assert_eq!(auth.bearer(""), None);
        assert_eq!(auth.bearer(&a_hash_of(&a)), None, "the hash itself is no token");
    }

    fn a_hash_of(token: &str) -> String {
        hash_token(token)
    }

    #[test]
    fn bad_configurations_are_refused_without_their_secrets() {
        let none = Authenticator::new(&AuthConfig::default()).expect("valid");
        assert!(none.is_none());
        for (users, wants) in [
            (vec![("", Role::Reader, None, vec!["0".repeat(64)])], "has no name"),
            (vec![("a", Role::Reader, None, vec![])], "give a password"),
            (vec![("a", Role::Reader, Some("hunter2".to_string()), vec![])], "not a SCRAM-SHA-256 verifier"),
            (vec![("a", Role::Reader, None, vec!["hunter2".to_string()])], "SHA-256 in hex"),
            (
                vec![("a", Role::Reader, None, vec!["0".repeat(64)]), ("a", Role::Admin, None, vec!["1".repeat(64)])],
                "named twice",
            ),
            (vec![("a", Role::Reader, None, vec!["0".repeat(64), "0".repeat(64)])], "given twice"),
        ] {
            let users: Vec<_> = users.into_iter().collect();
            let error = Authenticator::new(&config(&users)).expect_err("refused");
            assert!(error.contains(wants), "{error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    /// An unknown user gets the same made-up salt at every attempt (else asking twice would
    /// tell users that exist from those that do not).
    #[test]
    fn unknown_users_get_a_stable_made_up_salt() {
        let auth = Authenticator::new(&config(&[("ann", Role::Reader, Some(hash_password("x")), vec![])]))
            .expect("valid")
            .expect("on");
        let salt = |name: &str| match auth.scram_secret(name) {
            (ScramSecret::Verifier { salt, .. }, who) => (salt, who.map(|p| p.name)),
            _ => panic!("a verifier"),
        };
        assert_eq!(salt("mallory"), salt("mallory"));
        assert_eq!(salt("mallory").1, None);
        assert_ne!(salt("mallory").0, salt("eve").0);
        assert_eq!(salt("ann").1.as_deref(), Some("ann"));
    }

    #[test]
    fn roles_are_ordered() {
        let p = Principal { name: "w".into(), role: Role::Writer };
        assert_eq!(p.denied(Role::Reader, "x"), None);
        assert_eq!(p.denied(Role::Writer, "x"), None);
        assert_eq!(
            p.denied(Role::Admin, "x").as_deref(),
            Some("permission denied: x needs role admin; user `w` has role writer")
        );
    }
}
