//! A terminal on stdin: ember puts it in raw mode, the Ctrl-A x escape stops the VM, and the
//! terminal gets its settings back on every way out: a stop from the console, a panic on any
//! thread, a seccomp kill. Each test runs ember on a fresh pseudo-terminal.

mod common;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Starts ember on the terminal `slave` (stdin), stdout and stderr piped.
fn spawn_on(slave: &OwnedFd, guest_name: &str, self_test: Option<&str>) -> Child {
    let mut cmd = ember();
    cmd.args([
        "run",
        "--kernel",
        guest(guest_name).to_str().unwrap(),
        "--no-initrd",
    ])
    .stdin(Stdio::from(slave.try_clone().unwrap()))
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(t) = self_test {
        cmd.env("EMBER_SELF_TEST", t);
    }
    cmd.spawn().expect("start ember")
}

#[test]
fn ctrl_a_x_stops_the_vm_and_the_terminal_is_restored() {
    let (mut master, slave) = pty();
    let cooked = lflag(&slave);
    assert_ne!(cooked & libc::ICANON, 0);
    let child = spawn_on(&slave, "halt", None);
    // Raw mode is how ember shows it is attached (a hang guard, not a timing assertion).
    let start = Instant::now();
    while lflag(&slave) & libc::ICANON != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ember never put the terminal in raw mode"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    master.write_all(b"\x01x").unwrap();
    let o = wait(child, Duration::from_secs(30));
    assert_eq!(o.code, Some(130), "{o:?}");
    assert!(
        o.stderr.contains("stopped from the console (Ctrl-A x)"),
        "{o:?}"
    );
    assert_eq!(lflag(&slave), cooked, "terminal left in raw mode: {o:?}");
}

/// Each self-test fires after ember has put the terminal in raw mode (the test above shows
/// it does on a pty), so only the panic hook or the SIGSYS reporter can give it back; with
/// the reporter's restore taken out, this test fails.
#[test]
fn a_panic_or_a_seccomp_kill_restores_the_terminal() {
    for test in ["panic-vmm", "panic-vcpu", "seccomp-vmm", "seccomp-vcpu"] {
        let (_master, slave) = pty();
        let cooked = lflag(&slave);
        let o = wait(
            spawn_on(&slave, "hello64", Some(test)),
            Duration::from_secs(30),
        );
        if test.starts_with("panic") {
            assert_eq!(o.code, Some(7), "{test}: {o:?}");
            assert!(o.stderr.contains("ember: internal error"), "{test}: {o:?}");
        } else {
            // Killed by SIGSYS: no exit code.
            assert_eq!(o.code, None, "{test}: {o:?}");
            assert!(o.stderr.contains("ember: seccomp: "), "{test}: {o:?}");
        }
        assert!(o.stdout.is_empty(), "{test}: the guest ran: {o:?}");
        assert_eq!(
            lflag(&slave),
            cooked,
            "{test}: terminal left in raw mode: {o:?}"
        );
    }
}
