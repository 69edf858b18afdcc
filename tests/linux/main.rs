//! Linux guests, as far as the host allows. On hardware KVM they boot to userspace and the
//! init reports back; on a PVM-based /dev/kvm they prove kernel loading, the boot protocols and
//! the console, and that whatever stops them ends ember cleanly (the hardware part prints a
//! `SKIP:` line there). Each test prints its tier.
//!
//! `tier/svm.sh test` runs this binary in the hardware tier (AMD SVM emulated under QEMU TCG),
//! so every test here runs on every machine. Everything there is emulated, slowly: the limits
//! below are hang guards, never timing claims.

#[path = "../common/mod.rs"]
mod common;

mod balloon;
mod command;
mod debian;
mod density;
mod devices;
mod exec;
mod project_kernel;
mod shell;
mod smp;
mod snapshot;
mod soak;
mod timeline;

use std::time::Duration;

use common::*;

/// Exit codes (README "Exit codes").
const GUEST_PANIC: i32 = 4;
const INTERNAL_ERROR: i32 = 5;
const TIMEOUT: i32 = 10;
const SIGTERM_EXIT: i32 = 143;

/// One Linux boot on a PVM host: minutes, not milliseconds.
const PVM_LIMIT: Duration = Duration::from_secs(20 * 60);
/// One Linux boot in the hardware tier, where L1 and L2 both run under TCG (6-50 s seen for
/// the project kernel, about 100 s for Debian's bzImage).
const HW_LIMIT: Duration = Duration::from_secs(300);

/// Reads a terminal (a pty master) until `needle` appears in what was read, at most
/// [`HW_LIMIT`]; fails at once when `ember` has exited (the test holds the slave open, so the
/// master never reports an end: it is read without blocking).
fn read_until(
    master: &mut std::fs::File,
    seen: &mut Vec<u8>,
    needle: &str,
    ember: &mut std::process::Child,
) {
    use std::os::fd::AsRawFd;
    let fd = master.as_raw_fd();
    // SAFETY: F_GETFL and F_SETFL on a live fd.
    unsafe {
        libc::fcntl(
            fd,
            libc::F_SETFL,
            libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK,
        )
    };
    let start = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(seen).contains(needle) {
        assert!(
            start.elapsed() < HW_LIMIT,
            "{needle:?} never appeared: {}",
            String::from_utf8_lossy(seen)
        );
        match std::io::Read::read(master, &mut buf) {
            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => {
                if let Ok(Some(status)) = ember.try_wait() {
                    let mut said = String::new();
                    if let Some(mut e) = ember.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut said);
                    }
                    panic!(
                        "ember ended ({status}) before {needle:?} appeared: {}\nember: {said}",
                        String::from_utf8_lossy(seen)
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The project kernel built by kernels/build.sh, or a SKIP line.
fn kernel_or_skip(test: &str, file: &str) -> Option<String> {
    match project_kernel(file) {
        Some(p) => Some(p.display().to_string()),
        None => {
            skip(test, &format!("{file} is not built: run kernels/build.sh"));
            None
        }
    }
}

/// For an `--exec` test: the project kernel in the hardware tier, with a static busybox at
/// [`BUSYBOX`], or a SKIP line (`pvm_note` says what covers the test on PVM).
fn exec_ready(test: &str, pvm_note: &str) -> Option<String> {
    let k = kernel_or_skip(test, "vmlinux")?;
    if !hardware(test) {
        skip(
            test,
            &format!("Linux userspace does not run on a PVM-based /dev/kvm ({pvm_note})"),
        );
        return None;
    }
    if !std::path::Path::new(BUSYBOX).exists() {
        skip(
            test,
            "needs busybox-static (apt-get install busybox-static)",
        );
        return None;
    }
    Some(k)
}

/// A static program every `--exec` test can run: Debian's busybox-static.
const BUSYBOX: &str = "/bin/busybox";

/// Whether this is the hardware tier; prints the TIER line.
fn hardware(test: &str) -> bool {
    matches!(tier(test), HostFlavour::Hardware(_))
}

/// On PVM without the PVM command-line template the kernel stops at its first XRSTOR, a few
/// seconds in: the banner and early log must be on the console and the stop must be clean.
fn assert_pvm_early_stop(o: &Outcome) {
    assert!(o.stdout.contains("Linux version 6.1"), "no banner: {o:?}");
    assert!(o.stdout.contains("Command line:"), "no early log: {o:?}");
    assert_eq!(o.code, Some(INTERNAL_ERROR), "{o:?}");
    let errors: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| !l.contains("warning:"))
        .collect();
    assert_eq!(errors.len(), 1, "{o:?}");
    assert!(errors[0].contains("KVM_EXIT_INTERNAL_ERROR"), "{o:?}");
    assert!(o.stderr.contains("warning: /dev/kvm is PVM-based"), "{o:?}");
}

/// The built-in init's greeting, every vCPU online, a clean exit.
fn assert_greeting(o: &Outcome, vcpus: u32) {
    let s = if vcpus == 1 { "" } else { "s" };
    assert!(
        o.stdout.contains("Hello from ember: Linux 6.1")
            && o.stdout.contains(&format!(", {vcpus} vCPU{s} online")),
        "{o:?}"
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stderr.is_empty(), "{o:?}");
}
