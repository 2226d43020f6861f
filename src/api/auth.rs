//! Auth at the HTTP edge: lift the credentials out of the headers (`x-api-key`,
//! `Authorization`), let `identity` say who they belong to, and answer 401 when nobody.
//! The decision itself (keys, JWTs, tenants) lives in `crate::identity`, shared with MCP.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use super::error::ApiError;
use crate::identity::{AuthError, Authenticator, Credentials};

/// The credentials a request carries. A header that is not text counts as a wrong one.
pub fn credentials(headers: &HeaderMap) -> Credentials<'_> {
    let text = |name| headers.get(name).map(|v| v.to_str().unwrap_or(""));
    Credentials {
        api_key: text(header::HeaderName::from_static("x-api-key")),
        authorization: text(header::AUTHORIZATION),
    }
}

/// Middleware for protected routes: puts the caller's `Identity` (and its `Tenant`, which
/// most handlers need alone) into the request's extensions, or answers 401.
pub async fn require_identity(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let identity = state
        .auth
        .identify(&credentials(request.headers()))
        .map_err(|err| refusal(&state.auth, err))?;
    request.extensions_mut().insert(identity.tenant.clone());
    request.extensions_mut().insert(identity);
    Ok(next.run(request).await)
}

fn refusal(auth: &Authenticator, err: AuthError) -> ApiError {
    match err {
        AuthError::Token(why) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            format!("Invalid bearer token: {why}."),
        ),
        AuthError::Missing | AuthError::UnknownKey if auth.accepts_jwt() => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Invalid or missing credentials: send x-api-key with an API key, or Authorization: Bearer with a JWT signed by LibreChat.",
        ),
        AuthError::Missing | AuthError::UnknownKey => ApiError::unauthorized(),
    }
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

    #[test]
    fn credentials_come_from_x_api_key_and_authorization() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("k"));
        h.insert("authorization", HeaderValue::from_static("Bearer t"));
        let c = credentials(&h);
        assert_eq!(c.api_key, Some("k"));
        assert_eq!(c.authorization, Some("Bearer t"));
        let mut binary = HeaderMap::new();
        binary.insert("x-api-key", HeaderValue::from_bytes(b"\xff").unwrap());
        assert_eq!(credentials(&binary).api_key, Some(""));
        assert_eq!(credentials(&HeaderMap::new()).api_key, None);
    }

    #[test]
    fn masking_keeps_only_a_prefix() {
        assert_eq!(mask("supersecret"), "supe…");
    }
}
