//! A guest that floods the console while the host side is slow, blocked or gone: ember
//! buffers nothing unbounded, does not deadlock, and stays stoppable.

mod common;

use std::io::Read;
use std::time::Duration;

use common::*;

/// What tests/guests/flood.S writes before its last line: 4096 lines of 63 bytes.
const FLOOD_BYTES: usize = 4096 * 63;

fn children_max_rss_mib() -> i64 {
    // SAFETY: rusage is plain data, filled by getrusage for our reaped children.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    usage.ru_maxrss / 1024
}

#[test]
fn flood_into_a_slow_reader_arrives_whole() {
    let mut child = spawn_piped(&[
        "run",
        "--kernel",
        guest("flood").to_str().unwrap(),
        "--no-initrd",
    ]);
    drop(child.stdin.take());
    let mut out = child.stdout.take().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        std::thread::sleep(Duration::from_micros(200));
    }
    let o = wait(child, Duration::from_secs(120));
    assert_eq!(o.code, Some(0), "{o:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.ends_with("flood done\n"),
        "tail: {:?}",
        &text[text.len().saturating_sub(80)..]
    );
    assert_eq!(got.len(), FLOOD_BYTES + "flood done\n".len());
    assert!(
        children_max_rss_mib() < 64,
        "a child used {} MiB",
        children_max_rss_mib()
    );
}

#[test]
fn flood_into_a_closed_stdout_is_dropped_not_buffered() {
    let mut child = spawn_piped(&[
        "run",
        "--kernel",
        guest("flood").to_str().unwrap(),
        "--no-initrd",
    ]);
    drop(child.stdout.take());
    let o = wait(child, Duration::from_secs(120));
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(
        children_max_rss_mib() < 64,
        "a child used {} MiB",
        children_max_rss_mib()
    );
}

#[test]
fn flood_into_a_blocked_stdout_still_stops_on_sigterm() {
    // Nobody reads stdout: the pipe fills, the vCPU blocks in its write. SIGTERM must still
    // end ember promptly and cleanly.
    let mut child = spawn_piped(&[
        "run",
        "--kernel",
        guest("flood").to_str().unwrap(),
        "--no-initrd",
    ]);
    let out = child.stdout.take().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = wait(child, Duration::from_secs(30));
    drop(out);
    assert_eq!(o.code, Some(143), "{o:?}");
    assert!(o.stderr.contains("stopped by SIGTERM"), "{o:?}");
}
