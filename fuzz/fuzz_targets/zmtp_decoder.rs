//! Any byte stream, cut into reads of any size, through the kernel-facing ZMTP decoder:
//! it must never panic, never hold more than its limit, and hand out only messages within
//! the limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

#[path = "../../src/runtime/python/zmtp.rs"]
#[allow(dead_code)]
mod zmtp;

const LIMIT: u64 = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&control, data)) = data.split_first() else {
        return;
    };
    // The low bits pick the read size; bit 7 puts a valid opening first, so the fuzzer
    // spends its time past the handshake as well.
    let chunk = usize::from(control & 0x7f) * 37 + 1;
    let mut input = Vec::new();
    if control & 0x80 != 0 {
        input.extend_from_slice(&zmtp::greeting());
        input.extend_from_slice(&zmtp::ready("ROUTER"));
    }
    input.extend_from_slice(data);
    let mut decoder = zmtp::Decoder::new(LIMIT);
    let mut buf = BytesMut::new();
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let step = decoder.decode(&mut buf);
            assert!(decoder.held_bytes() <= LIMIT);
            assert!(buf.len() as u64 <= LIMIT.max(zmtp::MAX_COMMAND_BYTES) + piece.len() as u64);
            match step {
                Ok(Some(zmtp::Event::Message(frames))) => {
                    let cost: u64 = frames
                        .iter()
                        .map(|f| f.len() as u64 + zmtp::FRAME_OVERHEAD)
                        .sum();
                    assert!(cost <= LIMIT && frames.len() <= zmtp::MAX_FRAMES);
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
