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

/// Boots tests/guests/virtio_flood.c with `devices` and `--timeout 3s`, its stdout and stderr
/// pipes left unread until it has exited, through `wrap` (a network namespace, or nothing).
/// ember must stop at its timeout within 100 ms, by its own clock, and print under 64 KB.
fn broken_queues_notified_in_a_loop(test: &str, wrap: &[&str], devices: &[&str]) {
    let dir = std::env::temp_dir().join(format!("ember-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("d.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let timings = dir.join("timings.json");
    let kernel = guest("virtio_flood");
    let disk_arg = disk.to_str().unwrap().to_string();
    let timings_arg = format!("--timings={}", timings.display());
    let vsock_arg = format!("cid=3,uds={}", dir.join("v.sock").display());
    let mut args: Vec<&str> = wrap.to_vec();
    args.extend([
        env!("CARGO_BIN_EXE_ember"),
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--no-initrd",
        "--timeout",
        "3s",
        &timings_arg,
        "--disk",
        &disk_arg,
    ]);
    for d in devices {
        args.push(match *d {
            "vsock" => "--vsock",
            other => other,
        });
        if *d == "vsock" {
            args.push(&vsock_arg);
        }
    }
    let mut child = std::process::Command::new(args[0])
        .args(&args[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Nobody reads: both pipes fill up if ember writes more than they hold.
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{test}: ember did not stop at its --timeout 3s (still running after 30 s)");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_end(&mut err).unwrap();
    let text = format!(
        "{}\n---stderr---\n{}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    );
    assert_eq!(status.code(), Some(10), "{test}: {text}");
    assert!(
        out.len() + err.len() < 64 << 10,
        "{test}: printed {} bytes",
        out.len() + err.len()
    );
    assert!(text.contains("queues broken"), "{test}: {text}");
    assert!(
        text.contains("the device serves nothing until the driver resets it"),
        "{test}: {text}"
    );
    // ember's own clock: the timeout fired 3 s after the guest started, and ember was gone
    // within 100 ms of it.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&timings).unwrap()).unwrap();
    let at = |name: &str| {
        report["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["t_ns"].as_u64())
            .unwrap_or_else(|| panic!("{test}: no {name} in {report}"))
    };
    let fired = at("shutdown_requested") - at("first_kvm_run");
    let gone = at("process_exit") - at("shutdown_requested");
    assert!(
        (2_990_000_000..3_100_000_000).contains(&fired),
        "{test}: the timeout fired {fired} ns after the guest started"
    );
    assert!(gone < 100_000_000, "{test}: ember took {gone} ns to stop");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_broken_disk_queue_notified_in_a_loop_is_stopped_not_logged() {
    broken_queues_notified_in_a_loop("broken_disk_queue", &[], &[]);
}

#[test]
fn broken_queues_on_every_virtio_device_are_stopped_not_logged() {
    let test = "broken_queues_on_every_virtio_device";
    let ns = format!("ember-flood{}", std::process::id());
    let ip = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ip(&["netns", "add", &ns]) {
        skip(
            test,
            "needs root and iproute2 for a TAP in a network namespace",
        );
        return;
    }
    struct DropNs(String);
    impl Drop for DropNs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let _cleanup = DropNs(ns.clone());
    assert!(ip(&[
        "netns", "exec", &ns, "ip", "tuntap", "add", "tap0", "mode", "tap"
    ]));
    broken_queues_notified_in_a_loop(
        test,
        &["ip", "netns", "exec", &ns],
        &["--net", "tap=tap0", "vsock"],
    );
}
