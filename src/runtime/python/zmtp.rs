//! ZMTP 3.0, the ZeroMQ wire protocol, client side, for exactly what a Jupyter client needs:
//! one DEALER (shell, control) or SUB (iopub) connection over a Unix socket, NULL mechanism.
//!
//! The peer is a kernel that runs user code, and user code can write any bytes into these
//! connections (the kernel process holds their other end). So every length the peer
//! declares is checked before a byte is buffered:
//! - a message over the limit is read and thrown away, and reported as `Dropped`;
//! - what no ZeroMQ peer sends ends the connection with a [`Violation`]: a bad greeting,
//!   reserved flag bits, a command over [`MAX_COMMAND_BYTES`], a message before the
//!   handshake, a frame declaring more than [`MAX_DECLARED_FRAME`].
//!
//! A connection is never re-established: when it ends, the kernel is gone. The decoder
//! ([`Decoder`]) does no I/O, so it can be fuzzed on its own.

use std::io;
use std::path::Path;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

pub const GREETING_BYTES: usize = 64;
/// READY, PING, ERROR and SUBSCRIBE carry a few properties; nothing legitimate is bigger.
pub const MAX_COMMAND_BYTES: u64 = 64 * 1024;
/// Counted for each frame on top of its length, so that a message of many empty frames
/// costs what it costs in memory.
pub const FRAME_OVERHEAD: u64 = 64;
/// A Jupyter message is a few identities, the delimiter, the signature, four JSON parts and
/// perhaps some buffers; more frames than this and the message is dropped.
pub const MAX_FRAMES: usize = 256;
/// A frame declaring more than this is not an oversized output but an attack or garbage.
pub const MAX_DECLARED_FRAME: u64 = 1 << 32;
/// How much is read from the socket at once.
const READ_CHUNK: usize = 64 * 1024;

const FLAG_MORE: u8 = 0b001;
const FLAG_LONG: u8 = 0b010;
const FLAG_COMMAND: u8 = 0b100;
const FLAGS_RESERVED: u8 = !0b111;

/// The peer broke the protocol; the connection must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Violation(pub &'static str);

#[derive(Debug, thiserror::Error)]
pub enum ZmtpError {
    #[error(transparent)]
    Violation(#[from] Violation),
    #[error("the connection ended")]
    Closed,
    #[error("socket I/O failed: {0}")]
    Io(#[from] io::Error),
}

/// What the decoder hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer's READY command with its `Socket-Type` property.
    Ready { socket_type: Vec<u8> },
    /// A whole message: its frames, within the limit.
    Message(Vec<Bytes>),
    /// A message over the limit (or with too many frames), read and thrown away; `bytes`
    /// is what its frames declared.
    Dropped { bytes: u64 },
}

#[derive(Debug, Clone, Copy)]
enum State {
    Greeting,
    Flags,
    Length {
        flags: u8,
    },
    Body {
        flags: u8,
        len: usize,
    },
    /// Discarding a frame of an over-limit message: `left` bytes to go.
    Skip {
        flags: u8,
        left: u64,
    },
}

/// A streaming ZMTP 3.x decoder with a hard limit on what it buffers: the bytes of one
/// message (at most `max_message_bytes`, frame overhead included) plus what one read adds.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    max_message_bytes: u64,
    ready: bool,
    frames: Vec<Bytes>,
    /// The current message's cost so far (frame lengths plus overhead).
    cost: u64,
    /// Declared bytes of the message being dropped, when it is being dropped.
    dropping: Option<u64>,
}

impl Decoder {
    pub fn new(max_message_bytes: u64) -> Self {
        Decoder {
            state: State::Greeting,
            max_message_bytes,
            ready: false,
            frames: Vec::new(),
            cost: 0,
            dropping: None,
        }
    }

    /// Bytes held in frames of an unfinished message.
    pub fn held_bytes(&self) -> u64 {
        self.frames.iter().map(|f| f.len() as u64).sum()
    }

    /// Consume what `src` holds and return the next event, or `None` when more bytes are
    /// needed. Bytes that belong to a dropped message are consumed and forgotten.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Event>, Violation> {
        loop {
            match self.state {
                State::Greeting => {
                    if src.len() < GREETING_BYTES {
                        // The signature can be judged early: a stream that does not start
                        // like ZMTP needs no more bytes.
                        if !src.is_empty() && src[0] != 0xff {
                            return Err(Violation("the greeting has a bad signature"));
                        }
                        return Ok(None);
                    }
                    let g = src.split_to(GREETING_BYTES);
                    if g[0] != 0xff || g[9] & 1 != 1 {
                        return Err(Violation("the greeting has a bad signature"));
                    }
                    if g[10] < 3 {
                        return Err(Violation("the peer speaks a ZMTP version before 3.0"));
                    }
                    if &g[12..16] != b"NULL" || g[16..32].iter().any(|&b| b != 0) {
                        return Err(Violation("the peer asks for a security mechanism"));
                    }
                    self.state = State::Flags;
                }
                State::Flags => {
                    if src.is_empty() {
                        return Ok(None);
                    }
                    let flags = src.get_u8();
                    if flags & FLAGS_RESERVED != 0 {
                        return Err(Violation("a frame has reserved flag bits set"));
                    }
                    if flags & FLAG_COMMAND != 0 && flags & FLAG_MORE != 0 {
                        return Err(Violation("a command frame claims more frames follow"));
                    }
                    if flags & FLAG_COMMAND != 0
                        && (self.dropping.is_some() || !self.frames.is_empty())
                    {
                        return Err(Violation("a command arrived inside a message"));
                    }
                    self.state = State::Length { flags };
                }
                State::Length { flags } => {
                    let long = flags & FLAG_LONG != 0;
                    let need = if long { 8 } else { 1 };
                    if src.len() < need {
                        return Ok(None);
                    }
                    let len = if long {
                        src.get_u64()
                    } else {
                        u64::from(src.get_u8())
                    };
                    self.state = self.start_frame(flags, len)?;
                }
                State::Body { flags, len } => {
                    if src.len() < len {
                        return Ok(None);
                    }
                    let body = src.split_to(len).freeze();
                    self.state = State::Flags;
                    if flags & FLAG_COMMAND != 0 {
                        if let Some(event) = self.command(body)? {
                            return Ok(Some(event));
                        }
                        continue;
                    }
                    self.frames.push(body);
                    if flags & FLAG_MORE == 0 {
                        self.cost = 0;
                        return Ok(Some(Event::Message(std::mem::take(&mut self.frames))));
                    }
                }
                State::Skip { flags, left } => {
                    let take = left.min(src.len() as u64);
                    src.advance(take as usize);
                    let left = left - take;
                    if left > 0 {
                        self.state = State::Skip { flags, left };
                        return Ok(None);
                    }
                    self.state = State::Flags;
                    if flags & FLAG_MORE == 0 {
                        let bytes = self.dropping.take().unwrap_or_default();
                        self.cost = 0;
                        return Ok(Some(Event::Dropped { bytes }));
                    }
                }
            }
        }
    }

    /// Decide what to do with a frame whose header just arrived.
    fn start_frame(&mut self, flags: u8, len: u64) -> Result<State, Violation> {
        if len > MAX_DECLARED_FRAME {
            return Err(Violation("a frame declares an absurd length"));
        }
        if flags & FLAG_COMMAND != 0 {
            if len > MAX_COMMAND_BYTES {
                return Err(Violation("a command frame is too large"));
            }
            return Ok(State::Body {
                flags,
                len: len as usize,
            });
        }
        if !self.ready {
            return Err(Violation("a message arrived before the handshake"));
        }
        if let Some(dropped) = &mut self.dropping {
            *dropped += len;
            return Ok(State::Skip { flags, left: len });
        }
        let cost = self.cost + len + FRAME_OVERHEAD;
        if cost > self.max_message_bytes || self.frames.len() >= MAX_FRAMES {
            // Too big: forget what was kept of this message and skip the rest of it.
            let kept = self.held_bytes();
            self.frames = Vec::new();
            self.dropping = Some(kept + len);
            return Ok(State::Skip { flags, left: len });
        }
        self.cost = cost;
        Ok(State::Body {
            flags,
            len: len as usize,
        })
    }

    fn command(&mut self, body: Bytes) -> Result<Option<Event>, Violation> {
        let (name, properties) = split_command(&body)?;
        if !self.ready {
            if name != b"READY" {
                return Err(Violation("the handshake did not start with READY"));
            }
            self.ready = true;
            let socket_type = property(properties, b"Socket-Type")
                .ok_or(Violation("READY has no valid Socket-Type"))?;
            return Ok(Some(Event::Ready {
                socket_type: socket_type.to_vec(),
            }));
        }
        // PING, PONG, ERROR…: nothing a client of ours has to answer (it asks for no
        // heartbeats).
        Ok(None)
    }
}

/// A command's name and the bytes after it.
fn split_command(body: &[u8]) -> Result<(&[u8], &[u8]), Violation> {
    let (&name_len, rest) = body
        .split_first()
        .ok_or(Violation("an empty command frame"))?;
    let name_len = usize::from(name_len);
    if name_len == 0 || rest.len() < name_len {
        return Err(Violation("a command name runs past its frame"));
    }
    Ok((&rest[..name_len], &rest[name_len..]))
}

/// The value of one property in a READY command's metadata, if it is well formed.
fn property<'a>(mut props: &'a [u8], wanted: &[u8]) -> Option<&'a [u8]> {
    while !props.is_empty() {
        let name_len = usize::from(props[0]);
        let name = props.get(1..1 + name_len)?;
        let at = 1 + name_len;
        let value_len = u32::from_be_bytes(props.get(at..at + 4)?.try_into().ok()?) as usize;
        let value = props.get(at + 4..(at + 4).checked_add(value_len)?)?;
        if name.eq_ignore_ascii_case(wanted) {
            return Some(value);
        }
        props = &props[at + 4 + value_len..];
    }
    None
}

/// Our greeting: ZMTP 3.0, NULL mechanism, as a client. Version 3.0 keeps subscriptions
/// in the message form every 3.x peer understands.
pub fn greeting() -> [u8; GREETING_BYTES] {
    let mut g = [0u8; GREETING_BYTES];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3;
    g[11] = 0;
    g[12..16].copy_from_slice(b"NULL");
    g
}

fn push_frame(out: &mut Vec<u8>, flags: u8, body: &[u8]) {
    if body.len() > 255 {
        out.push(flags | FLAG_LONG);
        out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    } else {
        out.push(flags);
        out.push(body.len() as u8);
    }
    out.extend_from_slice(body);
}

/// A READY command announcing `socket_type`.
pub fn ready(socket_type: &str) -> Vec<u8> {
    let mut body = vec![5];
    body.extend_from_slice(b"READY");
    for (name, value) in [("Socket-Type", socket_type.as_bytes()), ("Identity", b"")] {
        body.push(name.len() as u8);
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(&(value.len() as u32).to_be_bytes());
        body.extend_from_slice(value);
    }
    let mut out = Vec::with_capacity(body.len() + 9);
    push_frame(&mut out, FLAG_COMMAND, &body);
    out
}

/// A message as frames on the wire.
pub fn encode(frames: &[Bytes]) -> Vec<u8> {
    let size: usize = frames.iter().map(|f| f.len() + 9).sum();
    let mut out = Vec::with_capacity(size);
    for (i, frame) in frames.iter().enumerate() {
        let more = if i + 1 < frames.len() { FLAG_MORE } else { 0 };
        push_frame(&mut out, more, frame);
    }
    out
}

/// The socket types a client of ours talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Talks to a ROUTER (shell, control).
    Dealer,
    /// Listens to a PUB (iopub), subscribed to everything.
    Sub,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Dealer => "DEALER",
            Kind::Sub => "SUB",
        }
    }

    fn accepts(self, peer: &[u8]) -> bool {
        match self {
            Kind::Dealer => peer == b"ROUTER" || peer == b"DEALER",
            Kind::Sub => peer == b"PUB" || peer == b"XPUB",
        }
    }
}

/// The sending half of a connection.
pub struct Sender {
    write: OwnedWriteHalf,
}

impl Sender {
    pub async fn send(&mut self, frames: &[Bytes]) -> io::Result<()> {
        self.write.write_all(&encode(frames)).await
    }
}

/// The receiving half of a connection.
pub struct Receiver {
    read: OwnedReadHalf,
    decoder: Decoder,
    buf: BytesMut,
}

/// What a receiver hands out once the handshake is done.
#[derive(Debug)]
pub enum Incoming {
    Message(Vec<Bytes>),
    Dropped { bytes: u64 },
}

impl Receiver {
    async fn next_event(&mut self) -> Result<Event, ZmtpError> {
        loop {
            if let Some(event) = self.decoder.decode(&mut self.buf)? {
                return Ok(event);
            }
            // A buffer that only ever grows by one chunk past what the decoder asked for.
            self.buf.reserve(READ_CHUNK);
            if self.read.read_buf(&mut self.buf).await? == 0 {
                return Err(ZmtpError::Closed);
            }
        }
    }

    /// The next message (or the news that one was dropped).
    pub async fn recv(&mut self) -> Result<Incoming, ZmtpError> {
        match self.next_event().await? {
            Event::Message(frames) => Ok(Incoming::Message(frames)),
            Event::Dropped { bytes } => Ok(Incoming::Dropped { bytes }),
            Event::Ready { .. } => Err(Violation("a second READY").into()),
        }
    }
}

/// Connect to the socket at `path` and do the handshake (greeting, READY, and for SUB the
/// subscription to every topic). The caller bounds the time this may take.
pub async fn connect(
    path: &Path,
    kind: Kind,
    max_message_bytes: u64,
) -> Result<(Sender, Receiver), ZmtpError> {
    let stream = UnixStream::connect(path).await?;
    let (read, mut write) = stream.into_split();
    let mut hello = greeting().to_vec();
    hello.extend_from_slice(&ready(kind.name()));
    write.write_all(&hello).await?;
    let mut receiver = Receiver {
        read,
        decoder: Decoder::new(max_message_bytes),
        buf: BytesMut::with_capacity(READ_CHUNK),
    };
    match receiver.next_event().await? {
        Event::Ready { socket_type } if kind.accepts(&socket_type) => {}
        Event::Ready { .. } => {
            return Err(Violation("the peer's socket type does not match").into());
        }
        _ => return Err(Violation("the handshake did not start with READY").into()),
    }
    if kind == Kind::Sub {
        // ZMTP 3.0 subscription: a message whose first byte is 1, then the topic (none).
        // Only after the peer's READY: libzmq drops a connection that sends a message
        // before its handshake is done.
        write
            .write_all(&encode(&[Bytes::from_static(&[1])]))
            .await?;
    }
    Ok((Sender { write }, receiver))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMIT: u64 = 4096;

    /// A peer's opening: greeting and READY from a ROUTER.
    fn opening() -> Vec<u8> {
        let mut out = greeting().to_vec();
        out.extend_from_slice(&ready("ROUTER"));
        out
    }

    /// Feed `input` to a decoder in chunks of the given sizes; collect events until the
    /// first violation. Checks the buffering bound after every step.
    fn run(input: &[u8], chunks: &[usize], limit: u64) -> (Vec<Event>, Option<Violation>) {
        let mut decoder = Decoder::new(limit);
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        let mut at = 0;
        let mut sizes = chunks.iter().copied().cycle();
        while at < input.len() {
            let n = sizes
                .next()
                .unwrap_or(input.len())
                .max(1)
                .min(input.len() - at);
            buf.extend_from_slice(&input[at..at + n]);
            at += n;
            loop {
                let step = decoder.decode(&mut buf);
                // What is held never passes one message's limit (or one command) plus the
                // bytes of one feed (the caller's read chunk).
                assert!(decoder.held_bytes() <= limit);
                assert!(buf.len() as u64 <= limit.max(MAX_COMMAND_BYTES) + n as u64);
                match step {
                    Ok(Some(event)) => events.push(event),
                    Ok(None) => break,
                    Err(v) => return (events, Some(v)),
                }
            }
        }
        (events, None)
    }

    #[test]
    fn a_well_formed_conversation_decodes() {
        let mut input = opening();
        let msg = vec![
            Bytes::from_static(b"<IDS|MSG>"),
            Bytes::from(vec![7u8; 300]),
            Bytes::new(),
        ];
        input.extend_from_slice(&encode(&msg));
        let (events, violation) = run(&input, &[3, 1, 100], LIMIT);
        assert_eq!(violation, None);
        assert_eq!(
            events,
            vec![
                Event::Ready {
                    socket_type: b"ROUTER".to_vec()
                },
                Event::Message(msg)
            ]
        );
    }

    #[test]
    fn a_frame_declaring_2_pow_62_bytes_is_refused_before_any_allocation() {
        let mut input = opening();
        input.push(FLAG_LONG);
        input.extend_from_slice(&(1u64 << 62).to_be_bytes());
        let (_, violation) = run(&input, &[9], LIMIT);
        assert_eq!(
            violation,
            Some(Violation("a frame declares an absurd length"))
        );
    }

    #[test]
    fn an_oversized_message_is_skipped_and_the_next_one_arrives() {
        let mut input = opening();
        let big = vec![
            Bytes::from_static(b"head"),
            Bytes::from(vec![1u8; 3 * LIMIT as usize]),
            Bytes::from_static(b"tail"),
        ];
        input.extend_from_slice(&encode(&big));
        let small = vec![Bytes::from_static(b"after")];
        input.extend_from_slice(&encode(&small));
        let (events, violation) = run(&input, &[1000], LIMIT);
        assert_eq!(violation, None);
        assert_eq!(
            events[1..],
            [
                Event::Dropped {
                    bytes: 3 * LIMIT + 8
                },
                Event::Message(small)
            ]
        );
    }

    #[test]
    fn many_empty_frames_count_against_the_limit() {
        let mut input = opening();
        let frames: Vec<Bytes> = (0..1000).map(|_| Bytes::new()).collect();
        input.extend_from_slice(&encode(&frames));
        let (events, violation) = run(&input, &[64], LIMIT);
        assert_eq!(violation, None);
        assert_eq!(events[1], Event::Dropped { bytes: 0 });
    }

    #[test]
    fn protocol_breaches_end_the_connection() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                b"GET / HTTP/1.1\r\n".to_vec(),
                "the greeting has a bad signature",
            ),
            (
                {
                    let mut g = greeting().to_vec();
                    g[12..17].copy_from_slice(b"PLAIN");
                    g
                },
                "the peer asks for a security mechanism",
            ),
            (
                {
                    let mut v = greeting().to_vec();
                    v.extend_from_slice(&encode(&[Bytes::from_static(b"x")]));
                    v
                },
                "a message arrived before the handshake",
            ),
            (
                {
                    let mut v = opening();
                    v.extend_from_slice(&[0x80, 0]);
                    v
                },
                "a frame has reserved flag bits set",
            ),
            (
                {
                    let mut v = opening();
                    v.push(FLAG_COMMAND | FLAG_LONG);
                    v.extend_from_slice(&(MAX_COMMAND_BYTES + 1).to_be_bytes());
                    v
                },
                "a command frame is too large",
            ),
        ];
        for (input, expected) in cases {
            let (_, violation) = run(&input, &[7], LIMIT);
            assert_eq!(violation, Some(Violation(expected)), "{input:?}");
        }
    }

    /// Frames as a hostile peer might send them: any flags, any declared length (short,
    /// long, absurd), bodies that may or may not match.
    fn hostile_stream() -> impl Strategy<Value = Vec<u8>> {
        let frame = (
            any::<u8>(),
            prop_oneof![0u64..300, 0u64..3 * LIMIT, any::<u64>()],
            proptest::collection::vec(any::<u8>(), 0..600),
        )
            .prop_map(|(flags, len, body)| {
                let mut out = vec![flags];
                if flags & FLAG_LONG != 0 {
                    out.extend_from_slice(&len.to_be_bytes());
                } else {
                    out.push(len as u8);
                }
                out.extend_from_slice(&body);
                out
            });
        (
            any::<bool>(),
            proptest::collection::vec(frame, 0..20),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(open, frames, tail)| {
                let mut out = if open { opening() } else { Vec::new() };
                for f in frames {
                    out.extend_from_slice(&f);
                }
                out.extend_from_slice(&tail);
                out
            })
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

        /// Whatever the bytes and however they are split, the decoder never panics, never
        /// holds more than the limit, and every message it hands out is within the limit.
        #[test]
        fn hostile_bytes_never_break_the_bounds(
            input in hostile_stream(),
            chunks in proptest::collection::vec(1usize..5000, 1..8),
        ) {
            let (events, _) = run(&input, &chunks, LIMIT);
            for event in events {
                if let Event::Message(frames) = event {
                    let cost: u64 = frames.iter().map(|f| f.len() as u64 + FRAME_OVERHEAD).sum();
                    prop_assert!(cost <= LIMIT);
                    prop_assert!(frames.len() <= MAX_FRAMES);
                }
            }
        }

        /// Messages a real peer sends come out exactly as they went in, however split.
        #[test]
        fn encoded_messages_round_trip(
            messages in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..700), 1..6),
                1..6,
            ),
            chunks in proptest::collection::vec(1usize..3000, 1..8),
        ) {
            let mut input = opening();
            let messages: Vec<Vec<Bytes>> = messages
                .into_iter()
                .map(|m| m.into_iter().map(Bytes::from).collect())
                .collect();
            for m in &messages {
                input.extend_from_slice(&encode(m));
            }
            let (events, violation) = run(&input, &chunks, LIMIT);
            prop_assert_eq!(violation, None);
            let got: Vec<Vec<Bytes>> = events
                .into_iter()
                .filter_map(|e| match e {
                    Event::Message(m) => Some(m),
                    _ => None,
                })
                .collect();
            prop_assert_eq!(got, messages);
        }
    }
}
