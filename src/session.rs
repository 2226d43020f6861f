//! Sessions: identifiers, ownership (tenants), the entity map and idle expiry.
//! A session is a workspace directory plus its metadata; kernels come later and hang off it.

use std::sync::Arc;
use std::time::Duration;

use crate::store::Store;

/// Length of every session and file id: LibreChat validates `^[A-Za-z0-9_-]{21}$`.
pub const ID_LEN: usize = 21;
const ID_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

/// A fresh 21-character id from the operating system's CSPRNG (nanoid shape).
pub fn new_id() -> String {
    let mut bytes = [0u8; ID_LEN];
    getrandom::fill(&mut bytes).expect("the operating system's random source is unavailable");
    // 64 symbols: the low six bits of each byte map onto the alphabet without bias.
    bytes
        .iter()
        .map(|b| ID_ALPHABET[(b & 63) as usize] as char)
        .collect()
}

pub fn is_valid_id(id: &str) -> bool {
    id.len() == ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The owner of sessions: one per API key (or one local tenant when no key is set).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tenant(pub String);

impl Tenant {
    /// The tenant used when the server runs without API keys.
    pub fn local() -> Self {
        Tenant("local".to_owned())
    }
}

/// Who asked for a session: used to find the latest session of (tenant, user, entity).
#[derive(Debug, Clone, Default)]
pub struct SessionOwner {
    pub user_id: Option<String>,
    pub entity_id: Option<String>,
}

/// `entity_id` and similar client labels: ≤ 40 characters of `[A-Za-z0-9_-]`.
pub fn is_valid_entity_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 40
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Delete sessions idle for longer than `ttl`, checking often enough that a session never
/// outlives its TTL by more than a quarter of it (and at least once a minute).
pub fn spawn_expiry(
    store: Arc<dyn Store>,
    ttl: Duration,
    on_expired: impl Fn(&str) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let every = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match store.expire_idle_sessions(ttl).await {
                Ok(gone) if !gone.is_empty() => {
                    tracing::info!(count = gone.len(), "expired idle sessions");
                    gone.iter().for_each(|id| on_expired(id));
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "session expiry failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_have_the_nanoid_shape_and_differ() {
        let a = new_id();
        let b = new_id();
        assert!(is_valid_id(&a), "{a}");
        assert!(is_valid_id(&b), "{b}");
        assert_ne!(a, b);
    }

    #[test]
    fn malformed_ids_are_refused() {
        assert!(!is_valid_id("short"));
        assert!(!is_valid_id("abcdefghijklmnopqrst!"));
        assert!(!is_valid_id("../../../../etc/passwd"));
        assert!(is_valid_id("abcdefghij_klmnopq-rs"));
    }

    #[test]
    fn entity_ids_are_short_and_plain() {
        assert!(is_valid_entity_id("agent_abc-123"));
        assert!(!is_valid_entity_id(&"a".repeat(41)));
        assert!(!is_valid_entity_id("has space"));
        assert!(!is_valid_entity_id(""));
    }
}
