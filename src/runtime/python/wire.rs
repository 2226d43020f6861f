//! The Jupyter messaging protocol (v5.3) on the wire: frames, HMAC-SHA256 signatures,
//! headers. Messages are kept as JSON values: we read a handful of fields and pass the rest
//! (MIME bundles) through untouched.

use bytes::Bytes;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use zeromq::ZmqMessage;

const DELIMITER: &[u8] = b"<IDS|MSG>";
pub const PROTOCOL_VERSION: &str = "5.3";

type HmacSha256 = hmac::Hmac<Sha256>;

#[derive(Debug, Clone)]
pub struct Message {
    pub header: Value,
    pub parent_header: Value,
    pub content: Value,
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
}

/// Signs and checks messages with the connection's key (used as raw bytes, as the key
/// string in the connection file, not hex-decoded).
pub struct Codec {
    key: Vec<u8>,
    session: String,
}

impl Codec {
    pub fn new(key: &str, session: String) -> Self {
        Codec {
            key: key.as_bytes().to_vec(),
            session,
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
    pub fn request(&self, msg_type: &str, content: Value) -> (String, ZmqMessage) {
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
        let message = ZmqMessage::try_from(all).expect("a message has frames");
        (msg_id, message)
    }

    /// Check and parse a message from any channel (identities or a topic may come first).
    pub fn decode(&self, message: ZmqMessage) -> Result<Message, WireError> {
        let frames = message.into_vec();
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
        Ok(Message {
            header: serde_json::from_slice(&parts[1])?,
            parent_header: serde_json::from_slice(&parts[2])?,
            content: serde_json::from_slice(&parts[4])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_message_round_trips_and_tampering_is_caught() {
        let codec = Codec::new("secret-key", "sess".into());
        let (id, msg) = codec.request("execute_request", json!({"code": "1+1"}));
        let decoded = codec.decode(msg.clone()).unwrap();
        assert_eq!(decoded.msg_type(), "execute_request");
        assert_eq!(decoded.header["msg_id"], id);
        assert_eq!(decoded.content["code"], "1+1");

        let mut frames = msg.into_vec();
        frames[5] = Bytes::from_static(b"{\"code\": \"evil\"}");
        let tampered = ZmqMessage::try_from(frames).unwrap();
        assert!(matches!(
            codec.decode(tampered),
            Err(WireError::BadSignature)
        ));
        let other = Codec::new("other-key", "sess".into());
        let (_, msg) = codec.request("kernel_info_request", json!({}));
        assert!(other.decode(msg).is_err());
    }
}
