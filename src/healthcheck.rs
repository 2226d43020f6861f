//! `code-interpreter healthcheck`: the container image's `HEALTHCHECK`. Asks the server on
//! this machine (`PORT`; `HOST` unless it is a wildcard address) for `/health?ready=1` and
//! exits 0 only on a 200. No shell or curl needed, and `PORT` is honoured.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::config::Settings;

/// A health check that hangs is worse than one that fails.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The address a local client reaches the server at: a wildcard listen address (`0.0.0.0`,
/// `::`) means loopback.
fn local_address(settings: &Settings) -> SocketAddr {
    let ip = match settings.host {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    };
    SocketAddr::new(ip, settings.port)
}

/// The status code of `GET /health?ready=1`.
fn ready_status(addr: SocketAddr) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    // HTTP/1.0 without keep-alive: the server closes after the answer.
    stream.write_all(b"GET /health?ready=1 HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut head = [0u8; 64];
    let mut filled = 0;
    while filled < 12 {
        let n = stream.read(&mut head[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    parse_status(&head[..filled]).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the answer is not an HTTP status line",
        )
    })
}

/// `HTTP/1.1 200 OK` → 200.
fn parse_status(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head.get(..12)?).ok()?;
    let code = line.strip_prefix("HTTP/1.")?.get(2..5)?;
    code.parse().ok()
}

pub fn run(settings: &Settings) -> i32 {
    let addr = local_address(settings);
    match ready_status(addr) {
        Ok(200) => 0,
        Ok(503) => {
            eprintln!(
                "not ready: {addr} answers 503 (no sandbox has started yet, or it cannot start; see /health and the log)"
            );
            1
        }
        Ok(code) => {
            eprintln!("unhealthy: {addr} answered {code} to /health?ready=1");
            1
        }
        Err(err) => {
            eprintln!("unhealthy: cannot ask {addr}: {err}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_give_their_code_and_anything_else_gives_none() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status(b"HTTP/1.1"), None);
    }
}
