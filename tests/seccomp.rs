//! The vCPU threads' seccomp filter is live: a forbidden call from one stops ember with a
//! message naming the call, by SIGSYS; `--no-seccomp` turns the filter off.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use common::*;

/// Boots the tiny guest with the seccomp self-test asked for, plus `extra` arguments.
fn self_test(extra: &[&str]) -> std::process::Output {
    ember()
        .args([
            "run",
            "--kernel",
            guest("hello64").to_str().unwrap(),
            "--no-initrd",
        ])
        .args(extra)
        .env("EMBER_SECCOMP_SELF_TEST", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn forbidden_syscall_in_a_vcpu_thread_dies_by_sigsys_with_its_name() {
    let o = self_test(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.signal(),
        Some(libc::SIGSYS),
        "{:?} {err}",
        o.status
    );
    assert!(err.contains("forbidden system call 110 (getppid)"), "{err}");
    // The guest never ran: the filter is installed before the first guest instruction.
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn no_seccomp_turns_the_filter_off() {
    let o = self_test(&["--no-seccomp"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("boot_params ok"));
}
