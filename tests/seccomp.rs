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
