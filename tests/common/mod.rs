//! Helpers for the end-to-end tests: run the real `ember` binary against real guests on
//! /dev/kvm, with a hang guard, and tell the test tiers apart.

#![allow(dead_code)]

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use ember::kvm::HostFlavour;

pub mod api;

/// The ember binary under test.
pub fn ember() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ember"))
}

/// A tiny guest built from tests/guests by build.rs.
pub fn guest(name: &str) -> PathBuf {
    PathBuf::from(env!("EMBER_TEST_GUESTS")).join(name)
}

/// Tiny guest `name` through the library: its configuration (2 vCPUs, 64 MiB, no initrd)
/// resolved for this host, and a runtime with the console to nowhere.
pub fn tiny_vm(
    name: &str,
    seccomp: ember::seccomp::Seccomp,
    measure_guest_memory: bool,
) -> (ember::resolve::ResolvedVm, ember::vmm::Runtime) {
    let mut config = ember::config::VmConfig::default();
    config.boot_source.kernel_image_path = Some(guest(name));
    config.boot_source.no_initrd = true;
    config.machine_config.vcpu_count = 2;
    config.machine_config.overcommit_vcpus = true;
    config.machine_config.mem_size_mib = 64;
    let vm = ember::resolve::resolve(&config, HostFlavour::detect()).expect("resolve");
    let mut runtime = ember::vmm::Runtime::detached(Box::new(std::io::sink()), seccomp);
    runtime.measure_guest_memory = measure_guest_memory;
    (vm, runtime)
}

/// What a finished ember run left behind.
#[derive(Debug)]
pub struct Outcome {
    /// Exit code (None if killed by a signal).
    pub code: Option<i32>,
    /// Guest console output.
    pub stdout: String,
    /// ember's own messages.
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
}

/// Reads a child's pipe to the end on its own thread.
fn read_in_thread<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut b);
        }
        String::from_utf8_lossy(&b).into_owned()
    })
}

/// Starts ember with `args`, every stdio piped.
pub fn spawn_piped(args: &[&str]) -> Child {
    ember()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ember")
}

/// Waits for `child`, killing it after `limit` (a hang guard, not a timing assertion).
pub fn wait(mut child: Child, limit: Duration) -> Outcome {
    let start = Instant::now();
    let out_reader = read_in_thread(child.stdout.take());
    let err_reader = read_in_thread(child.stderr.take());
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for ember") {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let s = child.wait().expect("reap ember");
            let stdout = out_reader.join().unwrap_or_default();
            let stderr = err_reader.join().unwrap_or_default();
            panic!(
                "ember did not finish within {limit:?} (hung): status {s:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Outcome {
        code: status.code(),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// Starts ember with `args`, stdin from /dev/null, stdout and stderr piped.
pub fn spawn_quiet(args: &[&str]) -> Child {
    ember()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ember")
}

/// Runs ember with `args`, stdin from /dev/null, within `limit`.
pub fn run(args: &[&str], limit: Duration) -> Outcome {
    let child = spawn_quiet(args);
    wait(child, limit)
}

/// Boots a tiny guest with extra arguments.
pub fn run_guest(name: &str, extra: &[&str]) -> Outcome {
    let kernel = guest(name);
    let mut args = vec![
        "run",
        "--kernel",
        kernel.to_str().expect("utf-8 path"),
        "--no-initrd",
    ];
    args.extend_from_slice(extra);
    run(&args, Duration::from_secs(60))
}

/// Writes a line to the real stderr: libtest captures `println!` of passing tests, and a
/// SKIP or TIER line must be seen in every run.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Prints the one line that says a test could not run here, and why.
pub fn skip(test: &str, reason: &str) {
    say(&format!("SKIP: {test}: {reason}"));
}

/// The project kernel built by kernels/build.sh, if present.
pub fn project_kernel(file: &str) -> Option<PathBuf> {
    let p = ember::config::cache_dir().join(file);
    p.exists().then_some(p)
}

/// Prints which tier a Linux test runs and returns the host flavour.
pub fn tier(test: &str) -> HostFlavour {
    let f = HostFlavour::detect();
    let tier = match f {
        HostFlavour::Hardware(_) => "hardware tier (boots to userspace)",
        _ => "PVM tier (kernel load, boot protocol and console, up to where the host stops it)",
    };
    say(&format!("TIER: {test}: {} /dev/kvm: {tier}", f.name()));
    f
}

/// Runs ember until `needle` appears on the guest console, then sends SIGTERM and waits for
/// it to stop. Returns the outcome with everything read so far.
pub fn run_until_then_stop(args: &[&str], needle: &str, limit: Duration) -> Outcome {
    let start = Instant::now();
    let mut child = spawn_quiet(args);
    let mut out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let left = limit.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(chunk) => seen.extend_from_slice(&chunk),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!(
                    "{needle:?} did not appear within {limit:?}:\n{}",
                    String::from_utf8_lossy(&seen)
                );
            }
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut o = wait(child, Duration::from_secs(60));
    while let Ok(chunk) = rx.try_recv() {
        seen.extend_from_slice(&chunk);
    }
    o.stdout = String::from_utf8_lossy(&seen).into_owned() + &o.stdout;
    o.elapsed = start.elapsed();
    o
}

/// The ELF vmlinux inside Debian's cloud kernel, unpacked by kernels/fetch-debian-kernel.sh.
pub fn debian_kernel_elf() -> Option<PathBuf> {
    let p = ember::config::cache_dir().join("debian").join("vmlinux");
    p.exists().then_some(p)
}

/// Debian's stock cloud kernel (bzImage), fetched by kernels/fetch-debian-kernel.sh.
pub fn debian_kernel() -> Option<PathBuf> {
    let p = std::env::var_os("EMBER_DEBIAN_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| ember::config::cache_dir().join("debian").join("vmlinuz"));
    p.exists().then_some(p)
}

/// A pseudo-terminal pair: (master, slave).
pub fn pty() -> (std::fs::File, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: two live ints for the fds; no name, termios or window size asked for.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned two fresh fds that nothing else owns.
    unsafe {
        (
            std::fs::File::from_raw_fd(master),
            OwnedFd::from_raw_fd(slave),
        )
    }
}

/// The terminal's local modes (ICANON, ECHO, ISIG: what raw mode clears).
pub fn lflag(fd: &OwnedFd) -> libc::tcflag_t {
    // SAFETY: termios is plain data, filled by tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a live terminal fd and a live termios.
    assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) }, 0);
    t.c_lflag
}
