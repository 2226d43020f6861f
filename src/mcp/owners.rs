//! Every MCP session belongs to the tenant that opened it. An `Mcp-Session-Id` is not a
//! credential: a request that carries another tenant's id is answered as if the session
//! did not exist (rmcp's own answers for an unknown id), so it can neither send into the
//! session, read its stream, nor end it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use crate::session::Tenant;

const SESSION_HEADER: &str = "mcp-session-id";

/// Which tenant opened each live MCP session, and when it was last used.
#[derive(Clone)]
pub struct SessionOwners {
    owners: Arc<Mutex<HashMap<String, (Tenant, Instant)>>>,
    /// rmcp forgets an idle session after this long; so do we.
    keep: Duration,
}

impl SessionOwners {
    pub fn new(keep: Duration) -> Self {
        SessionOwners {
            owners: Default::default(),
            keep,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Tenant, Instant)>> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `tenant` may use the session `id` (sessions we never saw are rmcp's to
    /// refuse); a use keeps the binding alive.
    fn allows(&self, id: &str, tenant: Option<&Tenant>) -> bool {
        let mut owners = self.lock();
        match owners.get_mut(id) {
            None => true,
            Some((owner, used)) if Some(&*owner) == tenant => {
                *used = Instant::now();
                true
            }
            Some(_) => false,
        }
    }

    /// Whether this node opened the live session `id`.
    pub fn knows(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    fn bind(&self, id: String, tenant: Tenant) {
        let mut owners = self.lock();
        let keep = self.keep;
        owners.retain(|_, (_, used)| used.elapsed() < keep);
        owners.insert(id, (tenant, Instant::now()));
    }

    fn forget(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// Middleware in front of the MCP service (after authentication, which put the `Tenant`
/// into the request).
pub async fn bind_sessions(
    State(owners): State<SessionOwners>,
    request: Request,
    next: Next,
) -> Response {
    let tenant = request.extensions().get::<Tenant>().cloned();
    let session = request
        .headers()
        .get(SESSION_HEADER)
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let delete = request.method() == Method::DELETE;
    if let Some(id) = &session
        && !owners.allows(id, tenant.as_ref())
    {
        return not_theirs(delete);
    }
    let response = next.run(request).await;
    match (&session, tenant) {
        (None, Some(tenant)) => {
            if let Some(id) = response
                .headers()
                .get(SESSION_HEADER)
                .and_then(|v| v.to_str().ok())
            {
                owners.bind(id.to_owned(), tenant);
            }
        }
        (Some(id), _) if delete && response.status().is_success() => owners.forget(id),
        _ => {}
    }
    response
}

/// What rmcp answers for a session it does not know.
fn not_theirs(delete: bool) -> Response {
    let (status, body) = if delete {
        (StatusCode::ACCEPTED, Body::empty())
    } else {
        (
            StatusCode::NOT_FOUND,
            Body::from("Not Found: Session not found"),
        )
    };
    Response::builder()
        .status(status)
        .body(body)
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_its_openers_alone_until_it_is_forgotten() {
        let owners = SessionOwners::new(Duration::from_secs(60));
        let (a, b) = (Tenant("a".into()), Tenant("b".into()));
        owners.bind("s1".into(), a.clone());
        assert!(owners.allows("s1", Some(&a)));
        assert!(!owners.allows("s1", Some(&b)));
        assert!(!owners.allows("s1", None));
        assert!(owners.allows("unknown", Some(&b)));
        owners.forget("s1");
        assert!(owners.allows("s1", Some(&b)));
    }

    #[test]
    fn idle_bindings_are_dropped_with_rmcps_sessions() {
        let owners = SessionOwners::new(Duration::ZERO);
        owners.bind("old".into(), Tenant("a".into()));
        owners.bind("new".into(), Tenant("a".into()));
        assert_eq!(owners.lock().len(), 1);
    }
}
