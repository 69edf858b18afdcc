//! One process boots VMs again and again through the library API: nothing may leak. Its own
//! test binary, so no other test's files or threads blur the counts.

mod common;

use common::*;
use ember::exit::ExitReason;
use ember::seccomp::Seccomp;
use ember::vmm::{VmOutcome, Vmm};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn tasks_now() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The thread count once it has settled: a joined thread can still be listed for a moment
/// (join returns when the thread clears its tid, before the kernel releases the task), and a
/// leaked thread stays. Settled means no change for 100 ms; 2 s at most.
fn threads() -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut n = tasks_now();
    let mut stable_since = std::time::Instant::now();
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
        let m = tasks_now();
        if m != n {
            n = m;
            stable_since = std::time::Instant::now();
        } else if stable_since.elapsed() >= std::time::Duration::from_millis(100) {
            break;
        }
    }
    n
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn boot_once() {
    let (vm, runtime) = tiny_vm("hello64", Seccomp::VcpuThreads, false);
    let run = Vmm::build(vm, runtime).expect("build").run().expect("run");
    assert_eq!(
        run.outcome,
        VmOutcome::Stopped {
            reason: ExitReason::Reset,
            status: None
        }
    );
}

#[test]
fn hundred_boots_leak_no_fds_threads_or_memory() {
    // Warm up: first-use allocations (thread-local buffers, the allocator's arenas).
    for _ in 0..5 {
        boot_once();
    }
    let (fds, tasks, rss) = (open_fds(), threads(), rss_kib());
    for _ in 0..100 {
        boot_once();
    }
    let (fds2, tasks2, rss2) = (open_fds(), threads(), rss_kib());
    println!("fds {fds} -> {fds2}, threads {tasks} -> {tasks2}, RSS {rss} KiB -> {rss2} KiB");
    assert_eq!(fds2, fds, "file descriptors leaked");
    assert_eq!(tasks2, tasks, "threads leaked");
    // 100 boots of a 64 MiB guest: a leak of guest memory or per-boot state would show as
    // megabytes; allow allocator noise.
    assert!(rss2 < rss + 4096, "RSS grew from {rss} KiB to {rss2} KiB");
}
