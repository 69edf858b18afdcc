//! The balloon with Linux's own driver (the project kernel, `--balloon`): memory the guest
//! frees goes back to the host while it runs (free page reporting), and a guest whose memory
//! the host took into the balloon gets it back as soon as it needs it (deflate on OOM): it
//! allocates more than it has free, and succeeds. tests/balloon.rs drives the device from a
//! tiny guest on every host.

use std::time::{Duration, Instant};

use super::*;
use common::api::*;

/// ember's resident memory in MiB: what the host gives the VM and ember together.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib >> 10)
        .unwrap_or(0)
}

/// The balloon's statistics over the control socket.
fn statistics(sock: &std::path::Path) -> serde_json::Value {
    let (code, body) = http(sock, "GET", "/balloon/statistics", "");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Polls `f` every 200 ms until it holds, at most `limit`; false if it never did.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    f()
}

/// The guest's side: touch 80 MiB and free it; wait (bounded) until the host's balloon has
/// taken most of its free memory; then allocate 90 MiB, more than it has free.
const SCRIPT: &str = "busybox mount -t proc proc /proc 2>/dev/null
busybox dd if=/dev/zero of=/dev/null bs=80M count=1 2>/dev/null && echo 'phase: freed 80 MiB'
i=0
while [ $(busybox awk '/MemFree/ {print $2}' /proc/meminfo) -gt 40000 ]; do
  i=$((i+1)); [ $i -gt 600 ] && { echo 'phase: the balloon never inflated'; exit 3; }
  busybox sleep 0.5
done
echo 'phase: inflated'
busybox dd if=/dev/zero of=/dev/null bs=90M count=1 2>/dev/null && echo 'phase: allocated 90 MiB'";

#[test]
fn freed_memory_goes_back_to_the_host_and_a_ballooned_guest_gets_it_back_when_it_needs_it() {
    let test =
        "freed_memory_goes_back_to_the_host_and_a_ballooned_guest_gets_it_back_when_it_needs_it";
    let Some(k) = exec_ready(test, "tests/balloon.rs drives the device with a tiny guest") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("ember-lb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("api.sock");
    let mut child = spawn_quiet(&[
        "run",
        "--kernel",
        &k,
        "--mem-mib",
        "128",
        "--balloon",
        "--api-sock",
        sock.to_str().unwrap(),
        "--timeout",
        "280s",
        "--exec",
        BUSYBOX,
        "--",
        "sh",
        "-c",
        SCRIPT,
    ]);
    let pid = child.id();
    let rx = collect(child.stdout.take().unwrap());
    let mut seen = String::new();
    wait_for(&rx, &mut seen, "phase: freed 80 MiB", HW_LIMIT);
    // The guest touched 80 MiB; reporting gives it back within seconds (Linux reports 2 s
    // after pages are freed). Without it ember would hold the 80 MiB and more.
    let mut last = (0, serde_json::Value::Null);
    let back = eventually(Duration::from_secs(90), || {
        last = (rss_mib(pid), statistics(&sock));
        last.0 < 70 && last.1["reported_mib"].as_u64().unwrap_or(0) >= 60
    });
    assert!(
        back,
        "freed memory did not come back: RSS {} MiB, {}",
        last.0, last.1
    );
    // The host takes 100 of the guest's 128 MiB into the balloon.
    let (code, body) = http(&sock, "PATCH", "/balloon", r#"{"amount_mib": 100}"#);
    assert_eq!(code, 204, "{body}");
    wait_for(&rx, &mut seen, "phase: inflated", HW_LIMIT);
    let s = statistics(&sock);
    assert!(s["inflated_mib"].as_u64().unwrap_or(0) >= 60, "{s}");
    // The guest allocates 90 MiB with about 10 free: it deflates the balloon as it goes.
    let o = wait(child, HW_LIMIT);
    drain(&rx, &mut seen, Duration::from_millis(100));
    seen.push_str(&o.stdout);
    assert!(seen.contains("phase: allocated 90 MiB"), "{seen}\n{o:?}");
    assert_eq!(o.code, Some(0), "{seen}\n{o:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
