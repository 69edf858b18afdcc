//! The control socket (`--api-sock`) end to end, in Firecracker's API shapes: a counting tiny
//! guest (tests/guests/count.c) is paused, snapshotted from outside into two files of the
//! client's naming, resumed, and continued in a new process from the number after the last one
//! it printed before the pause; bad requests get 400 and a fault message, never a stuck VM.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::api::*;
use common::*;

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-api-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The numbers of the whole `count N` lines in `text`, skipping its first line if `skip_first`.
fn counts(text: &str, skip_first: bool) -> Vec<u64> {
    let whole = &text[..text.rfind('\n').map(|i| i + 1).unwrap_or(0)];
    whole
        .lines()
        .skip(usize::from(skip_first))
        .filter_map(|l| l.strip_prefix("count ")?.parse().ok())
        .collect()
}

#[test]
fn a_vm_paused_and_snapshotted_over_the_socket_continues_in_a_new_process() {
    let dir = scratch("snapshot");
    let sock = dir.join("api.sock");
    let kernel = guest("count");
    let mut child = spawn_quiet(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--no-initrd",
        "--timeout",
        "120s",
        "--api-sock",
        sock.to_str().unwrap(),
    ]);
    let rx = collect(child.stdout.take().unwrap());
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(sock.exists() && counts(&seen, false).len() >= 3) {
        assert!(
            Instant::now() < deadline,
            "the guest did not count: {seen:?}"
        );
        drain(&rx, &mut seen, Duration::from_millis(50));
    }
    let (code, body) = http(&sock, "GET", "/", "");
    assert_eq!(code, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["state"], "Running", "{body}");
    // A snapshot of a running VM, an unknown state, a path ember does not serve, garbage.
    let state = dir.join("vm.state");
    let mem = dir.join("vm.mem");
    let create = format!(
        r#"{{"snapshot_type": "Full", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        state.display(),
        mem.display()
    );
    for (method, path, body, needle) in [
        ("PUT", "/snapshot/create", create.as_str(), "pause it first"),
        ("PATCH", "/vm", r#"{"state": "Asleep"}"#, "unknown state"),
        ("PATCH", "/vm", "{nonsense", "PATCH /vm"),
        (
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_type": "Diff", "snapshot_path": "a", "mem_file_path": "b"}"#,
            "Full",
        ),
        (
            "DELETE",
            "/machine",
            "",
            "Invalid request method and/or path",
        ),
    ] {
        let (code, answer) = http(&sock, method, path, body);
        assert_eq!(code, 400, "{method} {path}: {answer}");
        assert!(
            answer.contains("fault_message") && answer.contains(needle),
            "{method} {path}: {answer}"
        );
    }
    assert!(!state.exists(), "a refused snapshot left a file");
    // Paused: the counting stops.
    let (code, answer) = http(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(code, 204, "{answer}");
    drain(&rx, &mut seen, Duration::from_millis(300));
    let at_pause = seen.len();
    let last = *counts(&seen, false).last().expect("counted");
    drain(&rx, &mut seen, Duration::from_millis(500));
    assert_eq!(seen.len(), at_pause, "the guest ran on while paused");
    let (_, body) = http(&sock, "GET", "/", "");
    assert!(body.contains("\"Paused\""), "{body}");
    let (code, answer) = http(&sock, "PUT", "/snapshot/create", &create);
    assert_eq!(code, 204, "{answer}");
    assert!(state.exists() && mem.exists());
    // Resumed: it counts on in this process.
    let (code, answer) = http(&sock, "PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert_eq!(code, 204, "{answer}");
    drain(&rx, &mut seen, Duration::from_millis(500));
    assert!(
        counts(&seen, false).last().is_some_and(|&n| n > last),
        "no counting after the resume: {seen:?}"
    );
    // SIGTERM ends it, and the socket file goes with it.
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = wait(child, Duration::from_secs(30));
    assert_eq!(o.code, Some(143), "{o:?}");
    assert!(!sock.exists(), "the socket file is left behind");
    // The snapshot goes on from the number after the last one printed before the pause (its
    // first line may end one the first process had begun).
    let o = run(
        &[
            "run",
            "--restore",
            state.to_str().unwrap(),
            "--timeout",
            "1s",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(o.code, Some(10), "{o:?}");
    let restored = counts(&o.stdout, true);
    assert_eq!(
        restored.first(),
        Some(&(last + 2)),
        "after count {last}: {o:?}"
    );
    assert!(restored.windows(2).all(|w| w[1] == w[0] + 1), "{o:?}");
}

#[test]
fn a_control_socket_path_that_is_taken_is_refused_in_one_line() {
    let dir = scratch("taken");
    let sock = dir.join("api.sock");
    std::fs::write(&sock, b"").unwrap();
    let o = run_guest("halt", &["--api-sock", sock.to_str().unwrap()]);
    assert_eq!(o.code, Some(2), "{o:?}");
    assert_eq!(o.stderr.lines().count(), 1, "{o:?}");
    assert!(
        o.stderr.contains("--api-sock") && o.stderr.contains("something is there already"),
        "{o:?}"
    );
    assert!(sock.exists(), "ember removed a file it did not make");
}
