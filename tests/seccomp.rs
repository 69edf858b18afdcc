//! The seccomp filters are live on every ember thread: a forbidden call from a vCPU thread or
//! from the VMM thread stops ember with a message naming the thread and the call, by SIGSYS,
//! before the guest runs; a panic on either thread exits with code 7; `--no-seccomp` turns the
//! filters off. (`EMBER_SELF_TEST` is the fault-injection hook, see `ember::seccomp::self_test`.)

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use common::*;

/// Boots the tiny guest with `EMBER_SELF_TEST=test`, plus `extra` arguments.
fn self_test(test: &str, extra: &[&str]) -> std::process::Output {
    ember()
        .args([
            "run",
            "--kernel",
            guest("hello64").to_str().unwrap(),
            "--no-initrd",
            "--vcpus",
            "2",
            "--overcommit-vcpus",
        ])
        .args(extra)
        .env("EMBER_SELF_TEST", test)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn assert_sigsys(test: &str, thread: &str) {
    let o = self_test(test, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.signal(),
        Some(libc::SIGSYS),
        "{:?} {err}",
        o.status
    );
    let line = format!("ember: seccomp: {thread} made a forbidden system call 110 (getppid)");
    assert!(err.contains(&line), "{err}");
    // The guest never ran: the filters are installed before the first guest instruction.
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn forbidden_syscall_in_a_vcpu_thread_dies_by_sigsys_with_its_name() {
    assert_sigsys("seccomp-vcpu", "a vCPU thread");
}

#[test]
fn forbidden_syscall_in_the_vmm_thread_dies_by_sigsys_with_its_name() {
    assert_sigsys("seccomp-vmm", "the VMM thread");
}

#[test]
fn a_panic_on_any_thread_exits_with_code_7_in_one_line() {
    for (test, thread) in [
        ("panic-vcpu", "a vCPU thread"),
        ("panic-vmm", "the VMM thread"),
    ] {
        let o = self_test(test, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(7), "{test}: {:?} {err}", o.status);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{test}: {err}");
        assert!(
            lines[0].starts_with("ember: internal error (a bug, please report it)")
                && lines[0].contains(&format!("a deliberate panic in {thread}")),
            "{test}: {err}"
        );
    }
}

#[test]
fn no_seccomp_turns_the_filters_off() {
    for test in ["seccomp-vcpu", "seccomp-vmm"] {
        let o = self_test(test, &["--no-seccomp"]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{test}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(String::from_utf8_lossy(&o.stdout).contains("boot_params ok"));
    }
}

/// Library use with every thread confined: each VM runs from a thread of its own, which stays
/// confined after `run` returns and then exits; the caller's thread stays free.
#[test]
fn library_runs_confined_on_a_thread_per_vm() {
    use ember::seccomp::Seccomp;
    use ember::vmm::{VmOutcome, Vmm};

    for _ in 0..5 {
        let outcome = std::thread::spawn(|| {
            let (vm, runtime) = tiny_vm("fill", Seccomp::AllThreads, true);
            let run = Vmm::build(vm, runtime).expect("build").run().expect("run");
            // Still confined here: allocation works. Pieces below glibc's mmap threshold grow
            // this thread's own malloc heap (mprotect); a big one is mapped and unmapped.
            let pieces: Vec<Vec<u8>> = (0..256).map(|i| vec![i as u8; 32 << 10]).collect();
            let big: Vec<u8> = vec![7; 4 << 20];
            assert_eq!(pieces.len() * pieces[0].len() + big.len(), 12 << 20);
            // Not freed: glibc trimming a thread heap the first time opens a /proc file, which
            // the filter forbids (the limit docs/security.md states for library use).
            std::mem::forget(pieces);
            run
        })
        .join()
        .expect("the VM thread");
        assert!(
            matches!(outcome.outcome, VmOutcome::Stopped { .. }),
            "{outcome:?}"
        );
        assert!(outcome.guest_touched_bytes > 60 << 20, "{outcome:?}");
    }
    // The caller's thread was never confined.
    assert!(std::fs::read_to_string("/proc/self/status").is_ok());
}
