//! Seccomp filters (seccompiler): each vCPU thread, the threads that run guest code and handle
//! guest-controlled exits, may make only the system calls its run loop needs, and only the
//! KVM ioctls it uses. A forbidden call stops ember with a message naming the call, then
//! SIGSYS. docs/security.md lists every call and why it is there.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;
/// `KVM_GET_REGS`: `_IOR(KVMIO, 0x81, struct kvm_regs)`, read to report an internal error.
const KVM_GET_REGS: u64 = 0x8090_ae81;

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter could not be compiled.
    #[error("cannot build the seccomp filter: {0}")]
    Build(String),
    /// The kernel refused it.
    #[error("cannot install the seccomp filter: {0}")]
    Install(String),
}

/// Every system call a vCPU thread may make, with why.
pub const VCPU_SYSCALLS: &[(i64, &str)] = &[
    (
        libc::SYS_ioctl,
        "KVM_RUN and KVM_GET_REGS on its own vCPU fd (checked by argument)",
    ),
    (
        libc::SYS_write,
        "guest console bytes to stdout, eventfd signals, log lines to stderr",
    ),
    (
        libc::SYS_futex,
        "device and exit-reason mutexes shared with the event loop",
    ),
    (
        libc::SYS_rt_sigreturn,
        "returning from the kick signal's handler",
    ),
    (
        libc::SYS_rt_sigprocmask,
        "thread exit (glibc blocks signals)",
    ),
    (
        libc::SYS_sigaltstack,
        "thread exit (Rust removes its signal stack)",
    ),
    (
        libc::SYS_munmap,
        "thread exit (signal stack), freeing large allocations",
    ),
    (libc::SYS_madvise, "thread exit (glibc returns the stack)"),
    (libc::SYS_mmap, "allocations (an error message)"),
    (libc::SYS_mremap, "allocations"),
    (libc::SYS_brk, "allocations"),
    (
        libc::SYS_clock_gettime,
        "timeline stamps when the vDSO is unavailable",
    ),
    (libc::SYS_sched_yield, "lock back-off"),
    (libc::SYS_exit, "thread exit"),
];

/// The vCPU threads' filter.
pub fn vcpu_filter() -> Result<BpfProgram, SeccompError> {
    let err = |e: seccompiler::BackendError| SeccompError::Build(e.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &(nr, _) in VCPU_SYSCALLS {
        rules.insert(nr, Vec::new());
    }
    let ioctl = |cmd| -> Result<SeccompRule, SeccompError> {
        SeccompRule::new(vec![
            SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, cmd)
                .map_err(err)?,
        ])
        .map_err(err)
    };
    rules.insert(libc::SYS_ioctl, vec![ioctl(KVM_RUN)?, ioctl(KVM_GET_REGS)?]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(err)?;
    BpfProgram::try_from(filter).map_err(err)
}

/// Installs `filter` on the calling thread (after the SIGSYS reporter).
pub fn apply(filter: &BpfProgram) -> Result<(), SeccompError> {
    install_sigsys_reporter().map_err(|e| SeccompError::Install(e.to_string()))?;
    seccompiler::apply_filter(filter).map_err(|e| SeccompError::Install(e.to_string()))
}

/// Names the system calls most likely to be reported.
fn syscall_name(nr: i64) -> &'static str {
    for &(n, _) in VCPU_SYSCALLS {
        if n == nr {
            return match n {
                libc::SYS_ioctl => "ioctl (a KVM ioctl not on the list)",
                _ => "an allowed call with forbidden arguments",
            };
        }
    }
    match nr {
        libc::SYS_read => "read",
        libc::SYS_open => "open",
        libc::SYS_openat => "openat",
        libc::SYS_close => "close",
        libc::SYS_socket => "socket",
        libc::SYS_connect => "connect",
        libc::SYS_execve => "execve",
        libc::SYS_fork => "fork",
        libc::SYS_clone => "clone",
        libc::SYS_clone3 => "clone3",
        libc::SYS_kill => "kill",
        libc::SYS_tgkill => "tgkill",
        libc::SYS_getpid => "getpid",
        libc::SYS_getppid => "getppid",
        libc::SYS_mprotect => "mprotect",
        libc::SYS_exit_group => "exit_group",
        libc::SYS_nanosleep => "nanosleep",
        libc::SYS_clock_nanosleep => "clock_nanosleep",
        libc::SYS_epoll_wait => "epoll_wait",
        libc::SYS_ptrace => "ptrace",
        _ => "see `ausyscall` or /usr/include/x86_64-linux-gnu/asm/unistd_64.h",
    }
}

/// Appends a decimal number to a fixed buffer (async-signal-safe).
fn push_num(buf: &mut [u8; 256], len: &mut usize, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = 0;
    loop {
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        i += 1;
        if n == 0 {
            break;
        }
    }
    while i > 0 && *len < buf.len() {
        i -= 1;
        buf[*len] = digits[i];
        *len += 1;
    }
}

fn push(buf: &mut [u8; 256], len: &mut usize, s: &[u8]) {
    for &b in s {
        if *len < buf.len() {
            buf[*len] = b;
            *len += 1;
        }
    }
}

extern "C" fn report_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SIGSYS's siginfo carries the system call number at byte 24 (after signo, errno, code,
    // padding and the call address).
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo_t for SIGSYS; the field lies inside it.
        unsafe { *((info as *const u8).add(24) as *const i32) }
    };
    let mut buf = [0u8; 256];
    let mut len = 0;
    push(
        &mut buf,
        &mut len,
        b"ember: seccomp: a vCPU thread made a forbidden system call ",
    );
    push_num(&mut buf, &mut len, nr as u64);
    push(&mut buf, &mut len, b" (");
    push(&mut buf, &mut len, syscall_name(i64::from(nr)).as_bytes());
    push(
        &mut buf,
        &mut len,
        b"); this is a bug in ember, please report it\n",
    );
    // SAFETY: write(2) and signal(2) are async-signal-safe; the buffer is live. With the
    // default action restored, the pending SIGSYS ends the process once the handler returns.
    unsafe {
        libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), len);
        libc::signal(libc::SIGSYS, libc::SIG_DFL);
        libc::raise(libc::SIGSYS);
    }
}

fn install_sigsys_reporter() -> Result<(), vmm_sys_util::errno::Error> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, report_sigsys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_compiles_and_lists_every_call_once() {
        vcpu_filter().unwrap();
        let mut nrs: Vec<i64> = VCPU_SYSCALLS.iter().map(|&(n, _)| n).collect();
        nrs.sort();
        nrs.dedup();
        assert_eq!(nrs.len(), VCPU_SYSCALLS.len());
    }

    #[test]
    fn numbers_format() {
        let mut buf = [0u8; 256];
        let mut len = 0;
        push_num(&mut buf, &mut len, 0);
        push(&mut buf, &mut len, b",");
        push_num(&mut buf, &mut len, 18_446_744_073_709_551_615);
        assert_eq!(&buf[..len], b"0,18446744073709551615");
        assert_eq!(syscall_name(libc::SYS_getppid), "getppid");
    }
}
