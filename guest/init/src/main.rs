//! ember's guest init (PID 1 in the guest). It mounts /proc, /sys and /dev, tells ember that
//! userspace is up (the boot-timer port), then either prints a greeting describing the guest or
//! runs the `--exec` program and reports its exit status, and finally reboots, which `reboot=k`
//! turns into a VM exit.
//!
//! Only std and a few libc calls (declared below; glibc is linked statically) so it builds
//! offline with nothing but the toolchain.

use std::ffi::CString;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

/// The boot-timer port and the value that means "userspace reached" (Firecracker's).
const BOOT_TIMER_PORT: u16 = 0x3f0;
const BOOT_COMPLETE: u8 = 123;
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
    // SAFETY: asks the kernel for access to one port; failure is reported below.
    if unsafe { ioperm(u64::from(port), 1, 1) } != 0 {
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
    // `ember bench` runs this same binary as the container baselines' workload: there it only
    // does the workload, one line on stdout, and exits.
    if std::env::args().nth(1).as_deref() == Some("--workload") {
        println!("hello from the ember workload");
        return;
    }
    mount_fs("proc", "/proc");
    mount_fs("sysfs", "/sys");
    mount_fs("devtmpfs", "/dev");
    outb(BOOT_TIMER_PORT, BOOT_COMPLETE);
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
