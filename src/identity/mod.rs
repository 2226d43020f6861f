//! Who is calling. The credentials a request carries (an API key, or a JWT that LibreChat
//! signed) become an [`Identity`]: the tenant that owns sessions, and for a JWT the user.
//! REST, MCP over HTTP and MCP on stdio all derive it here; `api` only lifts the
//! credentials out of the headers.
//!
//! - Each configured API key is a tenant, named after a digest of the key (stable across
//!   restarts without storing the key). Keys are compared by their SHA-256 digests in
//!   constant time against every configured key.
//! - A verified JWT (`jwt`) is the tenant of its `tenant_id` claim and the user of its
//!   `sub`. JWT and key tenants never coincide.
//! - With neither keys nor JWT keys configured, everyone is the one local tenant.

pub mod jwt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::session::Tenant;
use jwt::{JwtVerifier, TokenError};

/// The credentials of one request, as its transport found them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Credentials<'a> {
    /// `x-api-key`.
    pub api_key: Option<&'a str>,
    /// `Authorization`: `Bearer <key or JWT>` or `Basic` with the key as user or password.
    pub authorization: Option<&'a str>,
}

impl<'a> Credentials<'a> {
    pub fn key(key: &'a str) -> Self {
        Credentials {
            api_key: Some(key),
            authorization: None,
        }
    }
}

/// Who a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub tenant: Tenant,
    /// The user the credentials vouch for (a JWT's `sub`); API keys name no user.
    pub user_id: Option<String>,
}

impl Identity {
    fn of(tenant: Tenant) -> Self {
        Identity {
            tenant,
            user_id: None,
        }
    }

    /// The user a request acts for: the one its credentials vouch for (a JWT's `sub`),
    /// whatever the client claims; with an API key, the one the client names (`user_id`,
    /// `User-Id`), if any. Sessions kept per user (`runtime_session_hint`, `entity_id`)
    /// and the exec rate limit are keyed by it.
    pub fn user(&self, claimed: Option<String>) -> Option<String> {
        self.user_id.clone().or(claimed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials")]
    Missing,
    #[error("the API key is not one of this server's")]
    UnknownKey,
    #[error(transparent)]
    Token(#[from] TokenError),
}

pub struct Authenticator {
    /// (digest of the key, tenant it stands for)
    keys: Vec<([u8; 32], Tenant)>,
    jwt: Option<JwtVerifier>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Authenticator {
    pub fn new(keys: &[String], jwt: Option<JwtVerifier>) -> Self {
        let keys = keys
            .iter()
            .map(|k| {
                let d = digest(k);
                (d, Tenant(format!("key-{}", hex::encode(&d[..8]))))
            })
            .collect();
        Authenticator { keys, jwt }
    }

    /// No keys and no JWT verification: every caller is the local tenant.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty() && self.jwt.is_none()
    }

    pub fn accepts_jwt(&self) -> bool {
        self.jwt.is_some()
    }

    /// The identity behind a request's credentials.
    ///
    /// `x-api-key`, when present, decides alone (a JWT next to it is not looked at, so a
    /// LibreChat that sends both keeps the key's sessions). Otherwise a bearer value that
    /// is a configured key is that key; any other bearer value is verified as a JWT when
    /// JWT verification is configured.
    pub fn identify(&self, creds: &Credentials) -> Result<Identity, AuthError> {
        if self.is_open() {
            return Ok(Identity::of(Tenant::local()));
        }
        if let Some(key) = creds.api_key {
            return self.key_tenant(key.trim()).ok_or(AuthError::UnknownKey);
        }
        let Some(auth) = creds.authorization.map(str::trim) else {
            return Err(AuthError::Missing);
        };
        let (scheme, value) = auth.split_once(' ').unwrap_or((auth, ""));
        let value = value.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            if let Some(found) = self.key_tenant(value) {
                return Ok(found);
            }
            return match &self.jwt {
                Some(verifier) => {
                    let claims = verifier.verify(value)?;
                    Ok(Identity {
                        tenant: Tenant(format!("jwt-{}", claims.tenant_id)),
                        user_id: Some(claims.user_id),
                    })
                }
                None => Err(AuthError::UnknownKey),
            };
        }
        if scheme.eq_ignore_ascii_case("basic") {
            return basic_candidates(value)
                .iter()
                .find_map(|candidate| self.key_tenant(candidate))
                .ok_or(AuthError::UnknownKey);
        }
        Err(AuthError::UnknownKey)
    }

    /// The tenant of a configured key; every key is compared, so timing says nothing
    /// about which one was close.
    fn key_tenant(&self, candidate: &str) -> Option<Identity> {
        let d = digest(candidate);
        let mut found = None;
        for (key, tenant) in &self.keys {
            if bool::from(key.ct_eq(&d)) && found.is_none() {
                found = Some(tenant.clone());
            }
        }
        found.map(Identity::of)
    }
}

/// `Authorization: Basic`: the key may be the user name or the password.
fn basic_candidates(value: &str) -> Vec<String> {
    use base64::Engine;
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(value) else {
        return Vec::new();
    };
    let decoded = String::from_utf8_lossy(&decoded).into_owned();
    match decoded.split_once(':') {
        Some((user, pass)) => vec![user.to_owned(), pass.to_owned()],
        None => vec![decoded],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn bearer(value: &str) -> String {
        format!("Bearer {value}")
    }

    #[test]
    fn each_key_is_its_own_tenant_and_every_header_form_works() {
        let auth = Authenticator::new(&["alpha".into(), "beta".into()], None);
        let a = auth.identify(&Credentials::key("alpha")).unwrap();
        let b_header = bearer("beta");
        let b = auth
            .identify(&Credentials {
                authorization: Some(&b_header),
                ..Credentials::default()
            })
            .unwrap();
        assert_ne!(a, b);
        assert_eq!(a.user_id, None);
        for basic in ["alpha:", "x:alpha"] {
            let header = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(basic)
            );
            let creds = Credentials {
                authorization: Some(&header),
                ..Credentials::default()
            };
            assert_eq!(auth.identify(&creds).unwrap(), a);
        }
        // A valid x-api-key next to some other bearer token (LibreChat's JWT) decides.
        let jwt = bearer("eyJ.jwt.x");
        let both = Credentials {
            api_key: Some("alpha"),
            authorization: Some(&jwt),
        };
        assert_eq!(auth.identify(&both).unwrap(), a);
        assert!(matches!(
            auth.identify(&Credentials::key("gamma")),
            Err(AuthError::UnknownKey)
        ));
        assert!(matches!(
            auth.identify(&Credentials::default()),
            Err(AuthError::Missing)
        ));
    }

    #[test]
    fn without_keys_everyone_is_the_local_tenant() {
        let auth = Authenticator::new(&[], None);
        assert!(auth.is_open());
        assert_eq!(
            auth.identify(&Credentials::default()).unwrap().tenant,
            Tenant::local()
        );
    }
}
