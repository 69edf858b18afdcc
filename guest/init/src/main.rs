//! ember's guest init (PID 1 in the guest). It mounts /proc, /sys and /dev, tells ember that
//! userspace is up (the boot-timer port), then either prints a greeting describing the guest or
//! runs the `--exec` program and reports its exit status, and finally reboots, which `reboot=k`
//! turns into a VM exit.
//!
//! The same binary is also a small vsock tool when called `vsock` (the device tests put it in a
//! guest's root filesystem as /bin/vsock): `vsock connect CID PORT MESSAGE` sends MESSAGE, closes
//! its sending side and prints the reply; `vsock listen PORT REPLY` takes one connection, prints
//! what it got and answers REPLY.
//!
//! Only std and a few libc calls (declared below; glibc is linked statically) so it builds
//! offline with nothing but the toolchain.

mod run;

use std::ffi::CString;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

/// The boot-timer port and the value that means "userspace reached" (Firecracker's).
const BOOT_TIMER_PORT: u16 = 0x3f0;
const BOOT_COMPLETE: u8 = 123;
/// ember's "ready", on the same port: the point where `--snapshot-on-ready` snapshots the VM.
const READY: u8 = 124;
/// ember's workload-status register.
const STATUS_PORT: u16 = 0x3f1;
const EXEC_PATH: &str = "/ember/exec";
const ARGS_PATH: &str = "/ember/args";
/// `reboot(2)` magic for a restart.
const RB_AUTOBOOT: i32 = 0x0123_4567;

unsafe extern "C" {
    fn mount(
        src: *const i8,
        target: *const i8,
        fstype: *const i8,
        flags: u64,
        data: *const u8,
    ) -> i32;
    fn ioperm(from: u64, num: u64, turn_on: i32) -> i32;
    fn reboot(cmd: i32) -> i32;
    fn sync();
    fn socket(domain: i32, ty: i32, protocol: i32) -> i32;
    fn bind(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
    fn listen(fd: i32, backlog: i32) -> i32;
    fn accept(fd: i32, addr: *mut u8, len: *mut u32) -> i32;
    fn connect(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
    fn shutdown(fd: i32, how: i32) -> i32;
}

/// `struct sockaddr_vm`.
#[repr(C)]
struct SockaddrVm {
    family: u16,
    reserved: u16,
    port: u32,
    cid: u32,
    zero: [u8; 4],
}

const AF_VSOCK: i32 = 40;
const SOCK_STREAM: i32 = 1;
const SHUT_WR: i32 = 1;
/// Any CID: what a listener binds to.
const VMADDR_CID_ANY: u32 = u32::MAX;

fn vsock_addr(cid: u32, port: u32) -> SockaddrVm {
    SockaddrVm {
        family: AF_VSOCK as u16,
        reserved: 0,
        port,
        cid,
        zero: [0; 4],
    }
}

/// A new vsock stream socket, as a File for reading and writing.
fn vsock_socket() -> std::io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket creation.
    let fd = unsafe { socket(AF_VSOCK, SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// The vsock tool (see the module docs); returns the process exit status.
fn vsock_tool(args: &[String]) -> std::io::Result<()> {
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, FromRawFd};
    let size = std::mem::size_of::<SockaddrVm>() as u32;
    let bad = || std::io::Error::other("usage: vsock connect CID PORT MESSAGE | vsock listen PORT REPLY");
    let num = |s: Option<&String>| s.and_then(|s| s.parse::<u32>().ok()).ok_or_else(bad);
    match args.first().map(String::as_str) {
        Some("connect") => {
            let (cid, port) = (num(args.get(1))?, num(args.get(2))?);
            let message = args.get(3).ok_or_else(bad)?;
            let mut s = vsock_socket()?;
            let addr = vsock_addr(cid, port);
            // SAFETY: a live sockaddr_vm of the size given.
            if unsafe { connect(s.as_raw_fd(), &addr, size) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            s.write_all(message.as_bytes())?;
            // SAFETY: shutting down the sending side of our own socket.
            unsafe { shutdown(s.as_raw_fd(), SHUT_WR) };
            let mut reply = String::new();
            s.read_to_string(&mut reply)?;
            println!("vsock reply: {reply}");
        }
        Some("listen") => {
            let port = num(args.get(1))?;
            let reply = args.get(2).ok_or_else(bad)?;
            let l = vsock_socket()?;
            let addr = vsock_addr(VMADDR_CID_ANY, port);
            // SAFETY: a live sockaddr_vm of the size given; a listening socket of our own.
            if unsafe { bind(l.as_raw_fd(), &addr, size) } != 0
                || unsafe { listen(l.as_raw_fd(), 1) } != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            println!("vsock listening on {port}");
            // SAFETY: accept without the peer's address.
            let fd = unsafe { accept(l.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut()) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: a fresh fd that nothing else owns.
            let mut c = unsafe { std::fs::File::from_raw_fd(fd) };
            let mut got = String::new();
            c.read_to_string(&mut got)?;
            println!("vsock got: {got}");
            c.write_all(reply.as_bytes())?;
        }
        _ => return Err(bad()),
    }
    Ok(())
}

fn mount_fs(fstype: &str, target: &str) {
    let (src, tgt, ty) = (
        CString::new(fstype),
        CString::new(target),
        CString::new(fstype),
    );
    if let (Ok(src), Ok(tgt), Ok(ty)) = (src, tgt, ty) {
        let _ = std::fs::create_dir_all(target);
        // SAFETY: NUL-terminated strings that outlive the call; no data argument.
        unsafe { mount(src.as_ptr(), tgt.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    }
}

/// Writes a byte to an I/O port. When the kernel refuses the port (built without
/// `CONFIG_X86_IOPL_IOPERM`, say), ember never hears of the boot or the status: say so on the
/// console, once, rather than fail in silence.
fn outb(port: u16, value: u8) {
    // Both of ember's ports at once, whichever is written: the grant is then in place from
    // the first write on (in a VM restored from a snapshot too, whose kernel granted it before
    // the snapshot).
    let (first, count) = if (BOOT_TIMER_PORT..=STATUS_PORT).contains(&port) {
        (BOOT_TIMER_PORT, STATUS_PORT - BOOT_TIMER_PORT + 1)
    } else {
        (port, 1)
    };
    // SAFETY: asks the kernel for access to the ports; failure is reported below.
    if unsafe { ioperm(u64::from(first), u64::from(count), 1) } != 0 {
        let e = std::io::Error::last_os_error();
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            eprintln!(
                "ember-init: ioperm({port:#x}) failed ({e}): ember cannot see the boot timer or the \
                 program's exit status; build the guest kernel with CONFIG_X86_IOPL_IOPERM=y"
            )
        });
        return;
    }
    // SAFETY: ioperm granted access to this port; the write has no memory effects.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack))
    };
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Counts CPUs in a list like "0-3,5".
fn count_cpus(list: &str) -> usize {
    list.trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.parse::<usize>(), b.parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => 1,
        })
        .sum()
}

fn greeting() -> String {
    let release = read("/proc/sys/kernel/osrelease");
    let cpus = count_cpus(&read("/sys/devices/system/cpu/online"));
    let meminfo = read("/proc/meminfo");
    let mem = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .map(|l| l.trim_start_matches("MemTotal:").trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    format!(
        "Hello from ember: Linux {}, {} vCPU{} online, MemTotal {}",
        release.trim(),
        cpus,
        if cpus == 1 { "" } else { "s" },
        mem
    )
}

/// Runs the --exec program; returns its status as a shell would (128 + signal if killed).
fn run_exec() -> u8 {
    let args: Vec<String> = read(ARGS_PATH).split('\0').map(str::to_string).collect();
    // The args file ends with a NUL, so the last split piece is empty.
    let args = &args[..args.len().saturating_sub(1)];
    let mut cmd = Command::new(EXEC_PATH);
    if let Some((argv0, rest)) = args.split_first() {
        std::os::unix::process::CommandExt::arg0(&mut cmd, argv0);
        cmd.args(rest);
    }
    match cmd.status() {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => c as u8,
            (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
            _ => 255,
        },
        Err(e) => {
            eprintln!("ember-init: cannot run {EXEC_PATH}: {e}");
            127
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args
        .first()
        .is_some_and(|a| a.rsplit('/').next() == Some("vsock"))
    {
        if let Err(e) = vsock_tool(&args[1..]) {
            eprintln!("vsock: {e}");
            std::process::exit(1);
        }
        return;
    }
    // `ember bench` runs this same binary as the container baselines' workload: there it only
    // does the workload, one line on stdout, and exits.
    if std::env::args().nth(1).as_deref() == Some("--workload") {
        println!("hello from the ember workload");
        return;
    }
    // `ember bench --density`'s idle container: the line, then nothing, for good.
    if std::env::args().nth(1).as_deref() == Some("--idle") {
        println!("hello from the ember workload");
        loop {
            // SAFETY: pause has no preconditions; it returns only after a caught signal.
            unsafe { libc::pause() };
        }
    }
    mount_fs("proc", "/proc");
    mount_fs("sysfs", "/sys");
    mount_fs("devtmpfs", "/dev");
    outb(BOOT_TIMER_PORT, BOOT_COMPLETE);
    if std::path::Path::new("/ember/run").exists() {
        run::main();
    }
    // Ready: booted, the file systems mounted, the work not started. A snapshot taken here
    // runs the work afresh in every VM restored from it.
    outb(BOOT_TIMER_PORT, READY);
    if std::path::Path::new(EXEC_PATH).exists() {
        let status = run_exec();
        outb(STATUS_PORT, status);
    } else {
        println!("{}", greeting());
        // The greeting is the workload: report it done, so ember can stamp its end.
        outb(STATUS_PORT, 0);
    }
    // SAFETY: plain syscalls; PID 1 ends the machine here on purpose.
    unsafe {
        sync();
        reboot(RB_AUTOBOOT);
    }
    // reboot(2) does not return on success; if it did, a returning PID 1 panics the kernel,
    // which ember also reports.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpus("0\n"), 1);
        assert_eq!(count_cpus("0-3"), 4);
        assert_eq!(count_cpus("0-3,5,7-8\n"), 7);
        assert_eq!(count_cpus(""), 0);
        assert_eq!(count_cpus("3-1"), 0);
    }
}
