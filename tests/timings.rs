//! `ember run --timings`: every phase, in order, with the guest-side stamps, from a tiny guest
//! booting on /dev/kvm.

mod common;

use common::*;

/// The phases a tiny guest that writes the console, the boot timer and resets passes, in
/// boot order (it reports no workload status, so `workload_end` is absent).
const TINY_GUEST_PHASES: &[&str] = &[
    "process_start",
    "config_parsed",
    "kvm_ready",
    "vm_created",
    "memory_mapped",
    "kernel_loaded",
    "vcpus_configured",
    "first_kvm_run",
    "first_console_byte",
    "userspace_reached",
    "shutdown_requested",
    "vm_torn_down",
    "process_exit",
];

#[test]
fn json_timeline_has_every_phase_in_order() {
    let dir = std::env::temp_dir().join(format!("ember-timings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("t.json");
    // An earlier, longer report in the file: the new one replaces it whole.
    std::fs::write(&file, vec![b'x'; 64 << 10]).unwrap();
    let arg = format!("--timings={}", file.display());
    let o = run_guest("hello64", &[&arg]);
    assert_eq!(o.code, Some(0), "{o:?}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(v["schema"], "ember-timings/1");
    assert_eq!(v["clock"], "CLOCK_MONOTONIC");
    // `ember run` defers KVM's teardown by default, and the report says so.
    assert_eq!(v["teardown"], "deferred", "{v}");
    let phases = v["phases"].as_array().unwrap();
    let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, TINY_GUEST_PHASES, "{v}");
    let times: Vec<u64> = phases.iter().map(|p| p["t_ns"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert_eq!(times[0], 0);
    let sum: u64 = phases.iter().map(|p| p["delta_ns"].as_u64().unwrap()).sum();
    assert_eq!(sum, *times.last().unwrap());
    for p in phases {
        let guest = matches!(
            p["name"].as_str(),
            Some("first_console_byte" | "userspace_reached")
        );
        assert_eq!(p["side"], if guest { "guest" } else { "vmm" }, "{p}");
    }
    assert!(v["memory"]["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert!(v["cpu"]["user_ns"].is_u64());
    let src = v["process_start"]["source"].as_str().unwrap();
    assert!(src == "taskstats" || src == "proc-stat", "{src}");
}

#[test]
fn table_goes_to_stderr_after_the_guest() {
    let o = run_guest("hello_pvh", &["--timings"]);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.contains("start_info ok"), "{o:?}");
    assert!(!o.stdout.contains("startup timeline"), "{o:?}");
    assert!(o.stderr.contains("startup timeline"), "{o:?}");
    for phase in TINY_GUEST_PHASES {
        assert!(o.stderr.contains(phase), "{phase}: {o:?}");
    }
    // The MMIO boot timer stamped userspace.
    assert!(o.stderr.contains("userspace_reached"), "{o:?}");
}

#[test]
fn json_on_stderr() {
    let o = run_guest("hello64", &["--timings=json"]);
    assert_eq!(o.code, Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_str(o.stderr.trim()).unwrap();
    assert_eq!(v["schema"], "ember-timings/1");
}

#[test]
fn unwritable_timings_file_is_bad_input() {
    let o = run_guest("hello64", &["--timings=/nonexistent/dir/t.json"]);
    assert_eq!(o.code, Some(2), "{o:?}");
    assert_eq!(o.stderr.lines().count(), 1, "{o:?}");
    assert!(
        o.stderr.contains("--timings=/nonexistent/dir/t.json"),
        "{o:?}"
    );
    assert!(o.stdout.is_empty(), "the VM must not start: {o:?}");
}

/// A run that ends before its report (here: a kernel that does not exist) leaves the file
/// empty, not holding an earlier run's report as if it were this one's.
#[test]
fn a_failed_run_leaves_no_earlier_report() {
    let dir = std::env::temp_dir().join(format!("ember-timings-fail-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("t.json");
    std::fs::write(&file, b"{\"schema\": \"an earlier report\"}\n").unwrap();
    let timings = format!("--timings={}", file.display());
    let o = run(
        &[
            "run",
            "--kernel",
            "/nonexistent/vmlinux",
            "--no-initrd",
            &timings,
        ],
        std::time::Duration::from_secs(30),
    );
    assert_eq!(o.code, Some(2), "{o:?}");
    assert_eq!(std::fs::read(&file).unwrap(), b"", "{o:?}");
}
