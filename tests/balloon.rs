//! The balloon end to end (`--balloon`), with a tiny guest that drives it as a driver would
//! (tests/guests/balloon.c): memory it reports or puts in the balloon is given back to the
//! host (it reads back as zero pages), hostile reports are handed back without harm, the
//! control socket changes the target while it runs, and a snapshot keeps the target. The
//! Linux driver's side is tests/linux/balloon.rs, in the hardware tier.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::api::*;
use common::*;

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-balloon-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

const LIMIT: Duration = Duration::from_secs(60);

/// The balloon guest with a 1 MiB target and a control socket, up to its inflated pages.
fn start(
    sock: &std::path::Path,
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<Vec<u8>>,
    String,
) {
    let kernel = guest("balloon");
    let mut child = spawn_quiet(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--no-initrd",
        "--mem-mib",
        "64",
        "--balloon=amount_mib=1",
        "--api-sock",
        sock.to_str().unwrap(),
        "--timeout",
        "120s",
    ]);
    let rx = collect(child.stdout.take().unwrap());
    let mut seen = String::new();
    wait_for(
        &rx,
        &mut seen,
        "inflate: 256 of 256 pages given back",
        LIMIT,
    );
    (child, rx, seen)
}

#[test]
fn reported_and_ballooned_pages_go_back_to_the_host_and_a_new_target_reaches_the_guest() {
    let dir = scratch("live");
    let sock = dir.join("api.sock");
    let (child, rx, mut seen) = start(&sock);
    assert!(
        seen.contains("report: 256 of 256 pages given back"),
        "{seen}"
    );
    assert!(seen.contains("neighbour kept"), "{seen}");
    let (code, body) = http(&sock, "GET", "/balloon", "");
    assert_eq!(code, 200, "{body}");
    let b = json(&body);
    assert_eq!(
        (
            &b["amount_mib"],
            &b["deflate_on_oom"],
            &b["free_page_reporting"]
        ),
        (&1.into(), &true.into(), &true.into()),
        "{body}"
    );
    let (code, body) = http(&sock, "GET", "/balloon/statistics", "");
    assert_eq!(code, 200, "{body}");
    let s = json(&body);
    assert_eq!(
        (
            &s["target_pages"],
            &s["actual_pages"],
            &s["inflated_mib"],
            &s["reported_mib"]
        ),
        (&256.into(), &256.into(), &1.into(), &1.into()),
        "{body}"
    );
    for (method, body, needle) in [
        ("PATCH", r#"{"amount_mib": 64}"#, "less than 64"),
        ("PATCH", r#"{"amount": 1}"#, "amount_mib"),
        (
            "PUT",
            r#"{"amount_mib": 1, "deflate_on_oom": true}"#,
            "--balloon",
        ),
    ] {
        let (code, answer) = http(&sock, method, "/balloon", body);
        assert_eq!(code, 400, "{method} {body}: {answer}");
        assert!(answer.contains(needle), "{method} {body}: {answer}");
    }
    let (code, body) = http(&sock, "PATCH", "/balloon", r#"{"amount_mib": 0}"#);
    assert_eq!(code, 204, "{body}");
    let o = wait(child, LIMIT);
    drain(&rx, &mut seen, Duration::from_millis(100));
    seen.push_str(&o.stdout);
    assert_eq!(o.code, Some(0), "{seen}\n{o:?}");
    assert!(
        seen.contains("deflate: target 0, configuration interrupt raised")
            && seen.contains("balloon: all ok"),
        "{seen}"
    );
    // The hostile frames and ranges were said, within the guest's log budget.
    assert!(o.stderr.contains("left in place"), "{o:?}");
    assert!(o.stderr.lines().count() < 10, "{o:?}");
}

#[test]
fn a_snapshot_keeps_the_balloon_target_and_the_restored_guest_deflates() {
    let dir = scratch("snapshot");
    let sock = dir.join("api.sock");
    let (child, _rx, _seen) = start(&sock);
    // A target the configuration did not give: only the snapshot can carry it over.
    assert_eq!(
        http(&sock, "PATCH", "/balloon", r#"{"amount_mib": 2}"#).0,
        204
    );
    assert_eq!(http(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#).0, 204);
    let state = dir.join("vm.state");
    let create = format!(
        r#"{{"snapshot_type": "Full", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        state.display(),
        dir.join("vm.mem").display()
    );
    let (code, body) = http(&sock, "PUT", "/snapshot/create", &create);
    assert_eq!(code, 204, "{body}");
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(wait(child, LIMIT).code, Some(143));

    let sock = dir.join("api2.sock");
    let mut child = spawn_quiet(&[
        "run",
        "--restore",
        state.to_str().unwrap(),
        "--api-sock",
        sock.to_str().unwrap(),
        "--timeout",
        "60s",
    ]);
    let rx = collect(child.stdout.take().unwrap());
    wait_for_socket(&sock, LIMIT);
    let (code, body) = http(&sock, "GET", "/balloon/statistics", "");
    assert_eq!(code, 200, "{body}");
    let s = json(&body);
    assert_eq!(
        (&s["target_mib"], &s["actual_pages"]),
        (&2.into(), &256.into()),
        "{body}"
    );
    assert_eq!(
        http(&sock, "PATCH", "/balloon", r#"{"amount_mib": 0}"#).0,
        204
    );
    let o = wait(child, LIMIT);
    let mut seen = String::new();
    drain(&rx, &mut seen, Duration::from_millis(100));
    assert_eq!(o.code, Some(0), "{seen}\n{o:?}");
    assert!(
        seen.contains("deflate: pages back in use") && seen.contains("balloon: all ok"),
        "{seen}"
    );
}

#[test]
fn bad_balloon_input_is_refused_in_one_line() {
    let dir = scratch("bad");
    let config = dir.join("vm.json");
    std::fs::write(
        &config,
        r#"{"balloon": {"amount_mib": 1, "deflate_on_oom": true, "stats_polling_interval_s": 5}}"#,
    )
    .unwrap();
    for (args, needle) in [
        (
            vec!["--mem-mib", "64", "--balloon=amount_mib=64"],
            "--balloon amount_mib=64: the guest has 64 MiB in all",
        ),
        (vec!["--balloon=size=1"], "unknown option \"size\""),
        (vec!["--balloon=deflate_on_oom=yes"], "takes on or off"),
        (vec!["--balloon=amount_mib=lots"], "whole number of MiB"),
        (
            vec!["--config", config.to_str().unwrap()],
            "vm.json: balloon.stats_polling_interval_s: 5: not supported by ember",
        ),
    ] {
        let o = run_guest("halt", &args);
        assert_eq!(o.code, Some(2), "{args:?}: {o:?}");
        assert_eq!(o.stderr.lines().count(), 1, "{args:?}: {o:?}");
        assert!(o.stderr.contains(needle), "{args:?}: {o:?}");
    }
    // A VM without a balloon says so.
    let sock = dir.join("api.sock");
    let kernel = guest("halt");
    let mut child = spawn_quiet(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--no-initrd",
        "--api-sock",
        sock.to_str().unwrap(),
        "--timeout",
        "60s",
    ]);
    let rx = collect(child.stdout.take().unwrap());
    let mut seen = String::new();
    wait_for(&rx, &mut seen, "\n", LIMIT);
    wait_for_socket(&sock, LIMIT);
    let (code, body) = http(&sock, "PATCH", "/balloon", r#"{"amount_mib": 1}"#);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("start it with --balloon"), "{body}");
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(wait(child, LIMIT).code, Some(143));
}
