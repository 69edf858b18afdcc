//! Talking to a running ember: its control socket (one HTTP request at a time) and its
//! console output as it comes.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// One request, `Connection: close`; the status and the body.
pub fn http(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = UnixStream::connect(sock).expect("connect to the control socket");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("an answer");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {out:?}"));
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

/// Collects a child's stdout as it comes.
pub fn collect(mut out: impl Read + Send + 'static) -> Receiver<Vec<u8>> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    rx
}

/// What has come so far, waiting up to `wait` for more.
pub fn drain(rx: &Receiver<Vec<u8>>, seen: &mut String, wait: Duration) {
    let end = Instant::now() + wait;
    while let Ok(c) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
        seen.push_str(&String::from_utf8_lossy(&c));
    }
}

/// Waits up to `limit` for `needle` in the output, collecting it into `seen`; fails the test,
/// showing what came, if it does not come.
pub fn wait_for(rx: &Receiver<Vec<u8>>, seen: &mut String, needle: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !seen.contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} within {limit:?}: {seen:?}"
        );
        drain(rx, seen, Duration::from_millis(50));
    }
}

/// Waits up to `limit` for the control socket at `sock` to be there; fails the test if not.
pub fn wait_for_socket(sock: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "no control socket at {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
