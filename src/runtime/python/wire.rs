//! The Jupyter messaging protocol (v5.3) on the wire: frames, HMAC-SHA256 signatures,
//! headers. Messages are kept as JSON values: we read a handful of fields and pass the rest
//! (MIME bundles) through untouched.
//!
//! A kernel's messages are user input. The signature is checked before any JSON is parsed,
//! and a message whose parsed form could take more memory than the limit (a megabyte of
//! `[0,0,0,…]` parses into tens of megabytes) is refused unparsed.

use bytes::Bytes;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const DELIMITER: &[u8] = b"<IDS|MSG>";
pub const PROTOCOL_VERSION: &str = "5.3";

type HmacSha256 = hmac::Hmac<Sha256>;

#[derive(Debug, Clone)]
pub struct Message {
    pub header: Value,
    pub parent_header: Value,
    pub content: Value,
    /// About how much memory the parsed message takes.
    pub size: usize,
}

impl Message {
    pub fn msg_type(&self) -> &str {
        self.header["msg_type"].as_str().unwrap_or("")
    }

    pub fn parent_id(&self) -> Option<&str> {
        self.parent_header["msg_id"].as_str()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("a message without the <IDS|MSG> delimiter")]
    NoDelimiter,
    #[error("a message with a bad signature")]
    BadSignature,
    #[error("a message frame is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a message of {bytes} bytes would take more memory than the limit once parsed")]
    TooLarge { bytes: u64 },
}

/// What one JSON value costs in memory beyond its text (a `Value`, a map or vector slot).
const NODE_BYTES: usize = 64;

/// About how much memory parsing `json` takes at most: its bytes, plus a node for every
/// opener and separator outside strings. One pass, no allocation.
pub fn parsed_size_estimate(json: &[u8]) -> usize {
    let (mut in_string, mut escaped, mut nodes) = (false, false, 0usize);
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else {
            match b {
                b'"' => in_string = true,
                b',' | b':' | b'[' | b'{' => nodes += 1,
                _ => {}
            }
        }
    }
    json.len().saturating_add(nodes.saturating_mul(NODE_BYTES))
}

/// Signs and checks messages with the connection's key (used as raw bytes, as the key
/// string in the connection file, not hex-decoded).
#[derive(Clone)]
pub struct Codec {
    key: Vec<u8>,
    session: String,
    max_parsed_bytes: usize,
}

impl Codec {
    pub fn new(key: &str, session: String, max_parsed_bytes: u64) -> Self {
        Codec {
            key: key.as_bytes().to_vec(),
            session,
            max_parsed_bytes: usize::try_from(max_parsed_bytes).unwrap_or(usize::MAX),
        }
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    fn sign(&self, frames: &[&[u8]]) -> String {
        let mut mac = self.mac();
        for f in frames {
            mac.update(f);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// A request; returns its `msg_id` (replies and outputs carry it as their parent).
    pub fn request(&self, msg_type: &str, content: Value) -> (String, Vec<Bytes>) {
        let msg_id = format!("{}-{}", self.session, crate::session::new_id());
        let header = json!({
            "msg_id": msg_id,
            "session": self.session,
            "username": "code-interpreter",
            "date": chrono::Utc::now().to_rfc3339(),
            "msg_type": msg_type,
            "version": PROTOCOL_VERSION,
        });
        let frames: [Vec<u8>; 4] = [
            header.to_string().into_bytes(),
            b"{}".to_vec(),
            b"{}".to_vec(),
            content.to_string().into_bytes(),
        ];
        let signature = self.sign(&frames.iter().map(Vec::as_slice).collect::<Vec<_>>());
        let mut all = vec![Bytes::from_static(DELIMITER), Bytes::from(signature)];
        all.extend(frames.into_iter().map(Bytes::from));
        (msg_id, all)
    }

    /// Check and parse a message from any channel (identities or a topic may come first).
    pub fn decode(&self, frames: Vec<Bytes>) -> Result<Message, WireError> {
        let at = frames
            .iter()
            .position(|f| f.as_ref() == DELIMITER)
            .ok_or(WireError::NoDelimiter)?;
        let parts = &frames[at + 1..];
        if parts.len() < 5 {
            return Err(WireError::NoDelimiter);
        }
        let expected = self.sign(&[&parts[1], &parts[2], &parts[3], &parts[4]]);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            expected.as_bytes(),
            parts[0].as_ref(),
        )) {
            return Err(WireError::BadSignature);
        }
        let parsed: usize = [&parts[1], &parts[2], &parts[4]]
            .iter()
            .map(|p| parsed_size_estimate(p))
            .fold(0, usize::saturating_add);
        if parsed > self.max_parsed_bytes {
            let bytes = parts.iter().map(|p| p.len() as u64).sum();
            return Err(WireError::TooLarge { bytes });
        }
        Ok(Message {
            header: serde_json::from_slice(&parts[1])?,
            parent_header: serde_json::from_slice(&parts[2])?,
            content: serde_json::from_slice(&parts[4])?,
            size: parsed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMIT: u64 = 1 << 20;

    #[test]
    fn a_signed_message_round_trips_and_tampering_is_caught() {
        let codec = Codec::new("secret-key", "sess".into(), LIMIT);
        let (id, msg) = codec.request("execute_request", json!({"code": "1+1"}));
        let decoded = codec.decode(msg.clone()).unwrap();
        assert_eq!(decoded.msg_type(), "execute_request");
        assert_eq!(decoded.header["msg_id"], id);
        assert_eq!(decoded.content["code"], "1+1");

        let mut frames = msg;
        frames[5] = Bytes::from_static(b"{\"code\": \"evil\"}");
        assert!(matches!(codec.decode(frames), Err(WireError::BadSignature)));
        let other = Codec::new("other-key", "sess".into(), LIMIT);
        let (_, msg) = codec.request("kernel_info_request", json!({}));
        assert!(other.decode(msg).is_err());
    }

    #[test]
    fn json_that_would_parse_into_much_more_memory_is_refused() {
        let codec = Codec::new("k", "s".into(), 64 * 1024);
        let numbers = format!("[{}0]", "0,".repeat(10_000));
        let (_, msg) = codec.request("stream", json!({}));
        let mut frames = msg;
        frames[5] = Bytes::from(numbers.clone());
        let sig = codec.sign(&[&frames[2], &frames[3], &frames[4], &frames[5]]);
        frames[1] = Bytes::from(sig);
        // 20 kB of text, over 600 kB once parsed.
        assert!(numbers.len() < 64 * 1024);
        assert!(matches!(
            codec.decode(frames),
            Err(WireError::TooLarge { .. })
        ));
        // Strings cost what they weigh.
        assert_eq!(parsed_size_estimate(br#""a,b:c[d{e\"f""#), 14);
        assert_eq!(parsed_size_estimate(b"[1,2]"), 5 + 2 * NODE_BYTES);
    }

    /// 2,000 cases per property in `cargo test`; `PROPTEST_CASES=…` runs more.
    fn fuzz_config() -> ProptestConfig {
        let mut config = ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        if std::env::var_os("PROPTEST_CASES").is_none() {
            config.cases = 2000;
        }
        config
    }

    proptest! {
        #![proptest_config(fuzz_config())]

        /// Any frames at all: decoding fails cleanly or yields a message, never panics.
        #[test]
        fn arbitrary_frames_never_panic(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..10),
            delimiter_at in proptest::option::of(0usize..10),
        ) {
            let codec = Codec::new("k", "s".into(), LIMIT);
            let mut frames: Vec<Bytes> = frames.into_iter().map(Bytes::from).collect();
            if let Some(at) = delimiter_at {
                frames.insert(at.min(frames.len()), Bytes::from_static(DELIMITER));
            }
            let _ = codec.decode(frames);
        }

        /// Correctly signed frames of arbitrary content: parsed or refused, never a panic,
        /// and never parsed past the limit.
        #[test]
        fn signed_garbage_is_refused_cleanly(
            parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 4),
        ) {
            let codec = Codec::new("k", "s".into(), 4096);
            let sig = codec.sign(&[&parts[0], &parts[1], &parts[2], &parts[3]]);
            let mut frames = vec![Bytes::from_static(DELIMITER), Bytes::from(sig)];
            frames.extend(parts.iter().cloned().map(Bytes::from));
            if codec.decode(frames).is_ok() {
                let total: usize = [&parts[0], &parts[1], &parts[3]].iter().map(|p| parsed_size_estimate(p)).sum();
                prop_assert!(total <= 4096);
            }
        }
    }
}
