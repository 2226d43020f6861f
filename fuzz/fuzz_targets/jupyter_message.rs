//! Frames of a Jupyter message, correctly signed (user code can read the key), with any
//! content: the codec must refuse or parse them without a panic, and never parse what
//! would take more than its limit.
#![no_main]

use bytes::Bytes;
use hmac::{KeyInit, Mac};
use libfuzzer_sys::fuzz_target;

#[path = "../../src/runtime/python/wire.rs"]
#[allow(dead_code)]
mod wire;

mod session {
    pub fn new_id() -> String {
        "fuzz".into()
    }
}

const KEY: &str = "fuzz-key";
const LIMIT: u64 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    // Four parts separated by 0xff bytes (header, parent, metadata, content), then maybe
    // extra frames; a leading byte decides whether the signature is right.
    let Some((&control, data)) = data.split_first() else {
        return;
    };
    let parts: Vec<&[u8]> = data.split(|&b| b == 0xff).collect();
    if parts.len() < 4 {
        return;
    }
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
    for p in &parts[..4] {
        mac.update(p);
    }
    let signature = if control & 1 == 0 {
        hex::encode(mac.finalize().into_bytes())
    } else {
        "00".repeat(32)
    };
    let mut frames = vec![Bytes::from_static(b"<IDS|MSG>"), Bytes::from(signature)];
    frames.extend(parts.iter().map(|p| Bytes::copy_from_slice(p)));
    let codec = wire::Codec::new(KEY, "s".into(), LIMIT);
    if let Ok(message) = codec.decode(frames) {
        assert!(message.size as u64 <= LIMIT);
        let _ = message.msg_type();
        let _ = message.parent_id();
    }
});
