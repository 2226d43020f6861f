//! Attacks on the server through a Python kernel's sockets. User code shares the kernel's
//! process, so it holds the kernel's end of every connection the server reads: each test
//! writes raw bytes into those connections from a real cell and checks that the server
//! stays up, bounded and honest about what happened.

mod common;

use common::{KEY_A, KEY_B, TestServer, exec};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Python that finds the kernel's end of the server's connection to `/run/kernel/k-<port>`
/// (1 shell, 2 iopub, 4 control): a connected socket named after the listener whose inode
/// is not in the sandbox's own /proc/net/unix (accepted sockets belong to the network
/// namespace of the side that connected: the server's).
const FIND_CONNECTION: &str = r#"
import os, socket, struct
def server_connection(port):
    path = f'/run/kernel/k-{port}'
    ours = {line.split()[6] for line in open('/proc/net/unix').read().splitlines()[1:]}
    fds = []
    for fd in map(int, os.listdir('/proc/self/fd')):
        try:
            link = os.readlink(f'/proc/self/fd/{fd}')
            if not link.startswith('socket:[') or link[8:-1] in ours:
                continue
            s = socket.socket(fileno=os.dup(fd))
            if s.family == socket.AF_UNIX and s.getsockname() == path and not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                fds.append(fd)
            s.close()
        except OSError:
            continue
    assert len(fds) == 1, fds
    return fds[0]

def write_all(fd, data):
    # libzmq's sockets are non-blocking: wait until writable, write what fits, repeat.
    import select, time
    view = memoryview(data)
    while view:
        select.select([], [fd], [])
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            pass

def quiet():
    # Let the kernel's own I/O thread finish the cell's opening messages first, so raw
    # bytes land between messages.
    import time
    time.sleep(0.5)

def long_frame_header(length, more=False):
    return bytes([0x02 | (1 if more else 0)]) + struct.pack('>Q', length)
"#;

async fn py(server: &TestServer, key: &str, session: Option<&str>, code: &str) -> Value {
    let mut body = json!({"lang": "py", "code": code});
    if let Some(sid) = session {
        body["session_id"] = json!(sid);
    }
    let (status, body) = exec(server, key, body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn sid(body: &Value) -> String {
    body["session_id"].as_str().unwrap().to_owned()
}

async fn health_answers(server: &TestServer) {
    let r = server
        .client
        .get(server.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_frame_declaring_2_pow_62_bytes_stops_only_that_kernel() {
    let server = TestServer::start(&[]).await;
    let first = py(&server, KEY_A, None, "x = 41").await;
    let session = sid(&first);
    let other = py(&server, KEY_B, None, "y = 'other tenant'").await;

    // The header alone: 9 bytes declaring 2^62 bytes on the shell, iopub and control
    // connections. The server used to reserve that much and abort.
    let attack = format!(
        "{FIND_CONNECTION}\nquiet()\nfor port in (1, 2, 4):\n    write_all(server_connection(port), long_frame_header(1 << 62))\nimport time; time.sleep(30)"
    );
    let body = py(&server, KEY_A, Some(&session), &attack).await;
    common::assert_stopped(&body, "error", "breaks the Jupyter protocol");
    health_answers(&server).await;

    // The session says its state was lost, and works again with a fresh kernel.
    let after = py(&server, KEY_A, Some(&session), "print('x' in dir())").await;
    assert_eq!(after["stdout"], "False\n", "{after}");
    assert!(
        after["stderr"]
            .as_str()
            .unwrap()
            .contains("broke the Jupyter protocol"),
        "{after}"
    );
    // Another tenant's kernel never noticed.
    let theirs = py(&server, KEY_B, Some(&sid(&other)), "print(y)").await;
    assert_eq!(theirs["stdout"], "other tenant\n", "{theirs}");
}

#[tokio::test]
async fn a_512_mib_frame_passes_through_without_the_server_keeping_it() {
    let server = TestServer::start(&[]).await;
    let warm = py(&server, KEY_A, None, "state = 'kept'").await;
    let session = sid(&warm);
    let before = common::peak_rss(server.pid());

    // A whole 512 MiB frame on iopub, streamed in 1 MiB writes: it is read and thrown
    // away, and the stream carries on after it.
    let attack = format!(
        "{FIND_CONNECTION}\nfd = server_connection(2)\nquiet()\nwrite_all(fd, long_frame_header(512 << 20))\nchunk = bytes(1 << 20)\nfor _ in range(512):\n    write_all(fd, chunk)\nprint('sent', state)"
    );
    let body = py(&server, KEY_A, Some(&session), &attack).await;
    assert_eq!(body["run"]["status"], "success", "{body}");
    assert_eq!(body["stdout"], "sent kept\n", "{body}");
    assert!(
        body["stderr"]
            .as_str()
            .unwrap()
            .contains("An output of 536870912 bytes was dropped"),
        "{body}"
    );
    let grown = common::peak_rss(server.pid()).saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "the server's peak memory grew by {grown} bytes"
    );
    health_answers(&server).await;
}

#[tokio::test]
async fn an_output_over_the_message_limit_is_dropped_with_a_note_and_the_state_survives() {
    let server = TestServer::start(&[
        ("KERNEL_MAX_MESSAGE_BYTES", "1048576"),
        ("MAX_OUTPUT_BYTES", "8388608"),
    ])
    .await;
    let body = py(
        &server,
        KEY_A,
        None,
        "import sys\nkept = 7\nprint('x' * 3_000_000)\nsys.stdout.flush()\nprint('small')",
    )
    .await;
    assert_eq!(body["run"]["status"], "success", "{body:.400}");
    let stdout = body["stdout"].as_str().unwrap();
    assert!(
        !stdout.contains("xxxx"),
        "{} {:.300}",
        stdout.len(),
        body["stderr"]
    );
    assert!(stdout.contains("small"), "{stdout:.200}");
    assert!(
        body["stderr"]
            .as_str()
            .unwrap()
            .contains("larger than KERNEL_MAX_MESSAGE_BYTES (1048576 bytes)"),
        "{body:.400}"
    );
    let after = py(&server, KEY_A, Some(&sid(&body)), "print(kept)").await;
    assert_eq!(after["stdout"], "7\n", "{after}");
}

#[tokio::test]
async fn garbage_and_forged_messages_stop_the_kernel_never_the_server() {
    let server = TestServer::start(&[]).await;

    // Bytes that are not ZMTP at all, into the shell connection.
    let garbage = format!(
        "{FIND_CONNECTION}\nquiet()\nwrite_all(server_connection(1), b'\\xff' * 64)\nimport time; time.sleep(30)"
    );
    let body = py(&server, KEY_A, None, &garbage).await;
    common::assert_stopped(&body, "error", "reserved flag bits");

    // A message signed with the real key (user code can read it) whose JSON nests 100,000
    // levels deep: parsing is refused, nothing overflows the server's stack.
    let forged = format!(
        r#"{FIND_CONNECTION}
import hmac, hashlib, json
key = json.load(open('/run/kernel/kernel.json'))['key'].encode()
parts = [b'{{}}', b'{{}}', b'{{}}', b'[' * 100000 + b']' * 100000]
sig = hmac.new(key, b''.join(parts), hashlib.sha256).hexdigest().encode()
frames = [b'<IDS|MSG>', sig] + parts
wire = b''
for i, f in enumerate(frames):
    more = 1 if i + 1 < len(frames) else 0
    wire += (bytes([0x02 | more]) + struct.pack('>Q', len(f)) if len(f) > 255 else bytes([more, len(f)])) + f
quiet()
write_all(server_connection(2), wire)
import time; time.sleep(30)
"#
    );
    let body = py(&server, KEY_A, None, &forged).await;
    common::assert_stopped(&body, "error", "breaks the Jupyter protocol");
    health_answers(&server).await;
    let ok = py(&server, KEY_A, None, "print(6 * 7)").await;
    assert_eq!(ok["stdout"], "42\n", "{ok}");
}

#[tokio::test]
async fn the_kernels_runtime_directory_is_read_only_to_it() {
    let server = TestServer::start(&[]).await;
    let code = r#"
import os, socket
for attempt in ('file', 'unlink', 'rebind'):
    try:
        if attempt == 'file':
            open('/run/kernel/filler', 'wb').write(b'x' * 1024)
        elif attempt == 'unlink':
            os.unlink('/run/kernel/k-2')
        else:
            s = socket.socket(socket.AF_UNIX)
            s.bind('/run/kernel/k-9')
        print('ALLOWED', attempt)
    except OSError as e:
        print('refused', attempt, e.errno)
"#;
    let body = py(&server, KEY_A, None, code).await;
    let out = body["stdout"].as_str().unwrap();
    assert!(!out.contains("ALLOWED"), "{body}");
    assert_eq!(out.matches("refused").count(), 3, "{body}");
    // And the kernel still works.
    let again = py(&server, KEY_A, Some(&sid(&body)), "print('alive')").await;
    assert_eq!(again["stdout"], "alive\n");
}
