//! API keys and tenants. Each configured key is a tenant; with no key the server has one
//! local tenant and every route is open.
//!
//! The key may come as `x-api-key`, or (only when `x-api-key` is absent) as
//! `Authorization: Bearer <key>` or `Authorization: Basic` with the key as user name or
//! password. Keys are compared by their SHA-256 digests in constant time, against every
//! configured key, so timing says nothing about which key was close.

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use crate::session::Tenant;

pub struct Auth {
    /// (digest of the key, tenant it stands for)
    keys: Vec<([u8; 32], Tenant)>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Auth {
    pub fn new(keys: &[String]) -> Self {
        let keys = keys
            .iter()
            .map(|k| {
                let d = digest(k);
                // The tenant id is derived from the key, so it is stable across restarts
                // without storing the key itself.
                (d, Tenant(format!("key-{}", hex::encode(&d[..8]))))
            })
            .collect();
        Auth { keys }
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The tenant behind the request's credentials, or `None` when they are missing or wrong.
    pub fn identify(&self, headers: &HeaderMap) -> Option<Tenant> {
        if self.is_open() {
            return Some(Tenant::local());
        }
        let candidates = presented_keys(headers);
        let mut found = None;
        for candidate in candidates {
            let d = digest(&candidate);
            for (key, tenant) in &self.keys {
                if bool::from(key.ct_eq(&d)) && found.is_none() {
                    found = Some(tenant.clone());
                }
            }
        }
        found
    }
}

/// The keys a request offers, in the order SPEC §2 gives them.
fn presented_keys(headers: &HeaderMap) -> Vec<String> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return vec![key.trim().to_owned()];
    }
    let Some(auth) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Vec::new();
    };
    let (scheme, value) = auth.trim().split_once(' ').unwrap_or((auth, ""));
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        vec![value.to_owned()]
    } else if scheme.eq_ignore_ascii_case("basic") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(value) else {
            return Vec::new();
        };
        let decoded = String::from_utf8_lossy(&decoded).into_owned();
        match decoded.split_once(':') {
            Some((user, pass)) => vec![user.to_owned(), pass.to_owned()],
            None => vec![decoded],
        }
    } else {
        Vec::new()
    }
}

/// Middleware for protected routes: puts the caller's [`Tenant`] into the request's
/// extensions, or answers 401.
pub async fn require_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let tenant = state
        .auth
        .identify(request.headers())
        .ok_or_else(ApiError::unauthorized)?;
    request.extensions_mut().insert(tenant);
    Ok(next.run(request).await)
}

/// A credential with its middle hidden, for request logs.
pub fn mask(secret: &str) -> String {
    let visible: String = secret.chars().take(4).collect();
    format!("{visible}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn each_key_is_its_own_tenant_and_every_header_form_works() {
        let auth = Auth::new(&["alpha".into(), "beta".into()]);
        let a = auth.identify(&headers(&[("x-api-key", "alpha")])).unwrap();
        let b = auth
            .identify(&headers(&[("authorization", "Bearer beta")]))
            .unwrap();
        assert_ne!(a, b);
        let basic_user = base64::engine::general_purpose::STANDARD.encode("alpha:");
        let basic_pass = base64::engine::general_purpose::STANDARD.encode("x:alpha");
        assert_eq!(
            auth.identify(&headers(&[(
                "authorization",
                &format!("Basic {basic_user}")
            )])),
            Some(a.clone())
        );
        assert_eq!(
            auth.identify(&headers(&[(
                "authorization",
                &format!("Basic {basic_pass}")
            )])),
            Some(a.clone())
        );
        // A valid x-api-key next to some other bearer token (LibreChat's JWT) is accepted.
        assert_eq!(
            auth.identify(&headers(&[
                ("x-api-key", "alpha"),
                ("authorization", "Bearer eyJ.jwt")
            ])),
            Some(a)
        );
        assert_eq!(auth.identify(&headers(&[("x-api-key", "gamma")])), None);
        assert_eq!(auth.identify(&HeaderMap::new()), None);
    }

    #[test]
    fn without_keys_everyone_is_the_local_tenant() {
        let auth = Auth::new(&[]);
        assert_eq!(auth.identify(&HeaderMap::new()), Some(Tenant::local()));
    }

    #[test]
    fn masking_keeps_only_a_prefix() {
        assert_eq!(mask("supersecret"), "supe…");
    }
}
