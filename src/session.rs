//! Sessions: identifiers, ownership (tenants), owner labels and the per-session turn.
//! A session is a workspace directory plus its metadata; a kernel may hang off it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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

/// One queue per session: runs, restarts, deletes and kernel evictions of a session take
/// turns, never overlap. Shared by `exec` (which queues runs) and the Python runtime (which
/// evicts only kernels whose session's turn is free).
#[derive(Default)]
pub struct SessionTurns {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A session's turn, held until dropped.
pub type Turn = tokio::sync::OwnedMutexGuard<()>;

impl SessionTurns {
    fn lock_for(&self, session_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Forget turns nobody holds or waits for, so the map does not grow with every
        // session ever seen.
        map.retain(|_, l| Arc::strong_count(l) > 1);
        Arc::clone(map.entry(session_id.to_owned()).or_default())
    }

    /// Wait for the session's turn.
    pub async fn take(&self, session_id: &str) -> Turn {
        self.lock_for(session_id).lock_owned().await
    }

    /// The session's turn if nobody holds it now.
    pub fn try_take(&self, session_id: &str) -> Option<Turn> {
        self.lock_for(session_id).try_lock_owned().ok()
    }
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
