//! Seccomp filters (seccompiler), one per kind of ember thread, each installed by the thread
//! itself before the first guest instruction runs:
//!
//! - a **vCPU thread** runs guest code and handles every guest-controlled exit: it may make only
//!   the system calls its run loop needs, and only the KVM ioctls it uses;
//! - the **VMM thread** (the one that calls [`crate::vmm::Vmm::run`]: `ember run`'s main thread)
//!   runs the event loop (signals, console input, the exit signal), stops and joins the vCPUs,
//!   tears the VM down and writes the report: it may make only the calls those need, and no KVM
//!   ioctl at all.
//!
//! A forbidden call stops ember with a one-line message naming the thread and the call, restores
//! the terminal, then dies by SIGSYS. docs/security.md lists every call and why it is there.

use std::cell::Cell;
use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// `_IO(KVMIO, nr)`.
const fn kvm_io(nr: u64) -> u64 {
    (0xae << 8) | nr
}
/// `_IOR(KVMIO, nr, T)`: KVM writes a `T` of `size` bytes.
const fn kvm_ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | kvm_io(nr)
}
/// `_IOWR(KVMIO, nr, T)`.
const fn kvm_iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | kvm_io(nr)
}

/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;
/// What a paused vCPU's thread reads to save its state into a snapshot
/// (`vcpu::state::VcpuState::save`): reads only, of its own vCPU.
const KVM_VCPU_SAVE: [u64; 10] = {
    use kvm_bindings as k;
    use std::mem::size_of;
    [
        kvm_ior(0x98, size_of::<k::kvm_mp_state>()), // KVM_GET_MP_STATE
        kvm_ior(0x83, size_of::<k::kvm_sregs>()),    // KVM_GET_SREGS
        kvm_ior(0xa4, size_of::<k::kvm_xsave>()),    // KVM_GET_XSAVE
        kvm_ior(0xa6, size_of::<k::kvm_xcrs>()),     // KVM_GET_XCRS
        kvm_ior(0xa1, size_of::<k::kvm_debugregs>()), // KVM_GET_DEBUGREGS
        kvm_ior(0x8e, size_of::<k::kvm_lapic_state>()), // KVM_GET_LAPIC
        kvm_io(0xa3),                                // KVM_GET_TSC_KHZ
        kvm_iowr(0x88, size_of::<k::kvm_msrs>()),    // KVM_GET_MSRS
        kvm_iowr(0x91, size_of::<k::kvm_cpuid2>()),  // KVM_GET_CPUID2
        kvm_ior(0x9f, size_of::<k::kvm_vcpu_events>()), // KVM_GET_VCPU_EVENTS
    ]
};
/// `KVM_GET_CLOCK`: the VM's kvmclock, read by the VMM thread for a snapshot.
const KVM_GET_CLOCK: u64 = kvm_ior(0x7c, std::mem::size_of::<kvm_bindings::kvm_clock_data>());
/// `KVM_GET_REGS`: `_IOR(KVMIO, 0x81, struct kvm_regs)`, read to report an internal error.
const KVM_GET_REGS: u64 = 0x8090_ae81;
/// `KVM_SET_GSI_ROUTING`: `_IOW(KVMIO, 0x6a, struct kvm_irq_routing)`, made by the IOAPIC when
/// the guest reprograms a pin (the guest's MMIO write arrives on a vCPU thread).
const KVM_SET_GSI_ROUTING: u64 = 0x4008_ae6a;

/// Which threads run under a seccomp filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seccomp {
    /// No filter anywhere: for debugging ember only (`--no-seccomp`).
    Off,
    /// The vCPU threads only; the thread that calls `run()` stays unconfined, so a library
    /// user can boot VM after VM from one thread.
    VcpuThreads,
    /// The vCPU threads and the thread that calls `run()`. A filter cannot be lifted, so that
    /// thread stays confined for the rest of its life: the `ember` command's choice, or a
    /// library user's who calls `run()` from a thread of its own per VM.
    AllThreads,
}

/// The kinds of ember thread that run under a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A vCPU thread.
    Vcpu,
    /// The thread that runs the event loop and tears the VM down.
    Vmm,
    /// A thread that serves a virtio-fs device's requests on the host's files.
    Fs,
    /// The control socket's thread (`--api-sock`): HTTP requests in, answers out, the files a
    /// snapshot is written into created.
    Api,
}

impl Role {
    /// The name a message gives the thread.
    pub fn name(self) -> &'static str {
        match self {
            Role::Vcpu => "a vCPU thread",
            Role::Vmm => "the VMM thread",
            Role::Fs => "a virtio-fs thread",
            Role::Api => "the control socket's thread",
        }
    }

    /// The value of `EMBER_SELF_TEST` that makes this thread misbehave (see [`self_test`]).
    fn tag(self) -> &'static str {
        match self {
            Role::Vcpu => "vcpu",
            Role::Vmm => "vmm",
            Role::Fs => "fs",
            Role::Api => "api",
        }
    }
}

thread_local! {
    /// The role of the calling thread's filter, for the SIGSYS message. Const-initialised
    /// and `Copy`, so reading it in a signal handler touches only thread-local memory.
    static ROLE: Cell<Option<Role>> = const { Cell::new(None) };
}

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

/// An allowed system call: number, name, why.
pub type Allowed = (i64, &'static str, &'static str);

/// Calls on both lists: thread exit, allocation, locks, the clock, and the terminal restore
/// and process exit a panic or a seccomp report needs.
pub const COMMON_SYSCALLS: &[Allowed] = &[
    (
        libc::SYS_write,
        "write",
        "console bytes to stdout, eventfd signals, log and error lines to stderr",
    ),
    (
        libc::SYS_futex,
        "futex",
        "mutexes shared by the vCPU and VMM threads; joining a thread",
    ),
    (
        libc::SYS_ioctl,
        "ioctl",
        "checked by argument: see the thread's own ioctls, plus TCGETS and TCSETS on stdin (restoring the terminal, also after a panic)",
    ),
    (
        libc::SYS_rt_sigprocmask,
        "rt_sigprocmask",
        "thread exit (glibc blocks signals), signal masks",
    ),
    (
        libc::SYS_rt_sigreturn,
        "rt_sigreturn",
        "returning from a signal handler",
    ),
    (
        libc::SYS_sigaltstack,
        "sigaltstack",
        "thread and process exit (Rust removes its signal stack)",
    ),
    (
        libc::SYS_munmap,
        "munmap",
        "thread exit (stacks), freeing large allocations",
    ),
    (
        libc::SYS_madvise,
        "madvise",
        "thread exit (glibc returns the stack); the balloon giving guest pages back (MADV_DONTNEED)",
    ),
    (libc::SYS_mmap, "mmap", "allocations (an error message)"),
    (libc::SYS_mremap, "mremap", "allocations"),
    (libc::SYS_brk, "brk", "allocations"),
    (
        libc::SYS_clock_gettime,
        "clock_gettime",
        "timeline stamps when the vDSO is unavailable",
    ),
    (libc::SYS_sched_yield, "sched_yield", "lock back-off"),
    (libc::SYS_exit, "exit", "thread exit"),
    (
        libc::SYS_mprotect,
        "mprotect",
        "growing a thread's malloc heap (checked by argument: never PROT_EXEC)",
    ),
    (
        libc::SYS_pause,
        "pause",
        "a thread that exits while another already is (Rust's exit guard) waits here",
    ),
    (
        libc::SYS_getpid,
        "getpid",
        "naming the process to signal a thread (glibc's pthread_kill, abort)",
    ),
    (
        libc::SYS_gettid,
        "gettid",
        "abort() signalling its own thread",
    ),
    (
        libc::SYS_tgkill,
        "tgkill",
        "checked by argument: only to this process, only SIGABRT (abort()) and, on the VMM thread, the kick signal",
    ),
    (
        libc::SYS_exit_group,
        "exit_group",
        "process exit, also after a panic (exit code 7)",
    ),
];

/// The calls only the VMM thread makes, beyond [`COMMON_SYSCALLS`].
pub const VMM_SYSCALLS: &[Allowed] = &[
    (libc::SYS_epoll_wait, "epoll_wait", "the event loop"),
    (
        libc::SYS_fstat,
        "fstat",
        "a written snapshot's memory file, for the stamp that spares a restore reading it",
    ),
    (
        libc::SYS_epoll_ctl,
        "epoll_ctl",
        "the event loop: console input off and on again with the UART FIFO (backpressure)",
    ),
    (
        libc::SYS_read,
        "read",
        "console input from stdin, eventfds (exit, FIFO drained), the signalfd",
    ),
    (
        libc::SYS_close,
        "close",
        "tearing down: vCPU, VM, KVM, eventfd, signalfd, epoll and report fds",
    ),
    (
        libc::SYS_mincore,
        "mincore",
        "counting the guest's resident pages for --timings",
    ),
    (
        libc::SYS_getrusage,
        "getrusage",
        "CPU time and peak RSS for --timings",
    ),
    (
        libc::SYS_pread64,
        "pread64",
        "virtio-blk reads from the disk image",
    ),
    (
        libc::SYS_pwrite64,
        "pwrite64",
        "virtio-blk writes to the disk image",
    ),
    (
        libc::SYS_fdatasync,
        "fdatasync",
        "virtio-blk flushes: the guest's data made durable",
    ),
    (
        libc::SYS_accept4,
        "accept4",
        "vsock: host processes connecting to the --vsock socket",
    ),
    (
        libc::SYS_socket,
        "socket",
        "checked by argument: Unix sockets only, for vsock streams the guest opens to the host",
    ),
    (
        libc::SYS_connect,
        "connect",
        "vsock: reaching the host listener <uds>_<port> a guest connects to",
    ),
    (
        libc::SYS_recvfrom,
        "recvfrom",
        "vsock: reading the host side of a stream",
    ),
    (
        libc::SYS_sendto,
        "sendto",
        "checked by argument: no destination address; vsock: writing the host side of a stream (std writes sockets with send and MSG_NOSIGNAL)",
    ),
    (
        libc::SYS_shutdown,
        "shutdown",
        "vsock: passing a guest's half-close on to the host side",
    ),
    (
        libc::SYS_unlink,
        "unlink",
        "removing the vsock socket file when the VM ends, and a snapshot's empty files when none was written",
    ),
    (
        libc::SYS_rmdir,
        "rmdir",
        "removing the --snapshot-on-ready directory ember made when no snapshot was written",
    ),
    (
        libc::SYS_clone,
        "clone",
        "checked by argument: only the teardown keeper's flags (CLONE_VM and SIGCHLD); the keeper inherits this filter",
    ),
    (
        libc::SYS_close_range,
        "close_range",
        "the teardown keeper closing every fd but the VM's",
    ),
    (
        libc::SYS_poll,
        "poll",
        "at exit, waiting (bounded) for a slow stderr to take ember's last messages",
    ),
];

/// The calls only the control socket's thread makes, beyond [`COMMON_SYSCALLS`]: it takes
/// connections on its socket, reads requests and writes answers, and creates (or, when the
/// snapshot fails, removes) the files a snapshot is written into. The VM itself it only
/// reaches through the event loop ([`crate::vmm::VmHandle::ask`]): no KVM, no signals but
/// the common ones, no socket of its own.
pub const API_SYSCALLS: &[Allowed] = &[
    (libc::SYS_accept4, "accept4", "a client connecting"),
    (
        libc::SYS_recvfrom,
        "recvfrom",
        "a request (std reads a socket with recv)",
    ),
    (
        libc::SYS_close,
        "close",
        "a client's connection; a snapshot's files once handed over",
    ),
    (
        libc::SYS_openat,
        "openat",
        "creating a snapshot's state and memory files (`PUT /snapshot/create`)",
    ),
    (libc::SYS_unlink, "unlink", "a failed snapshot's files"),
    (
        libc::SYS_setsockopt,
        "setsockopt",
        "a client's read timeout (a silent client cannot hold the socket)",
    ),
];

/// The calls only a virtio-fs thread makes, beyond [`COMMON_SYSCALLS`]: the passthrough
/// file system's (fuse-backend-rs) on the shared tree, and the thread's wait on its queues.
/// No socket, no exec, no ioctl but the terminal's, no KVM.
pub const FS_SYSCALLS: &[Allowed] = &[
    (
        libc::SYS_poll,
        "poll",
        "waiting on the device's queue and wake-up eventfds",
    ),
    (
        libc::SYS_read,
        "read",
        "the eventfds; glibc reading /proc/sys/vm/overcommit_memory when it first trims the thread's heap",
    ),
    (
        libc::SYS_openat,
        "openat",
        "a name in a shared directory (O_PATH, O_NOFOLLOW), a file reopened through /proc/self/fd, the share's root again at the guest's FUSE_INIT",
    ),
    (libc::SYS_close, "close", "files the guest closed or forgot"),
    (
        libc::SYS_dup,
        "dup",
        "FUSE_FLUSH (a close in the guest) closes a duplicate",
    ),
    (
        libc::SYS_newfstatat,
        "newfstatat",
        "attributes (fstatat with AT_EMPTY_PATH)",
    ),
    (libc::SYS_statx, "statx", "attributes with the mount id"),
    (libc::SYS_fstatfs, "fstatfs", "statfs"),
    (libc::SYS_getdents64, "getdents64", "reading a directory"),
    (
        libc::SYS_lseek,
        "lseek",
        "directory offsets, SEEK_DATA and SEEK_HOLE",
    ),
    (
        libc::SYS_preadv,
        "preadv",
        "reading a file into the guest's buffers",
    ),
    (
        libc::SYS_pwritev,
        "pwritev",
        "writing a file from the guest's buffers (writable shares only)",
    ),
    (
        libc::SYS_readlinkat,
        "readlinkat",
        "reading a symbolic link (the guest resolves it)",
    ),
    (libc::SYS_mkdirat, "mkdirat", "mkdir in a writable share"),
    (
        libc::SYS_mknodat,
        "mknodat",
        "FIFOs and sockets in a writable share (never device nodes: the policy refuses them)",
    ),
    (
        libc::SYS_symlinkat,
        "symlinkat",
        "ln -s in a writable share",
    ),
    (libc::SYS_linkat, "linkat", "ln in a writable share"),
    (
        libc::SYS_unlinkat,
        "unlinkat",
        "rm and rmdir in a writable share",
    ),
    (libc::SYS_renameat2, "renameat2", "mv in a writable share"),
    (libc::SYS_fchmod, "fchmod", "chmod of an open file"),
    (
        libc::SYS_fchmodat,
        "fchmodat",
        "chmod (through /proc/self/fd)",
    ),
    (libc::SYS_fchownat, "fchownat", "chown"),
    (libc::SYS_utimensat, "utimensat", "touch"),
    (libc::SYS_ftruncate, "ftruncate", "truncating a file"),
    (libc::SYS_fallocate, "fallocate", "fallocate"),
    (libc::SYS_fsync, "fsync", "fsync"),
    (libc::SYS_fdatasync, "fdatasync", "fdatasync"),
    (libc::SYS_fcntl, "fcntl", "file status flags (F_SETFL)"),
    (
        libc::SYS_umask,
        "umask",
        "the file system's own set-up, again at the guest's FUSE_INIT",
    ),
    (
        libc::SYS_setresuid,
        "setresuid",
        "acting as the guest's caller for a create (the raw call: this thread only)",
    ),
    (
        libc::SYS_setresgid,
        "setresgid",
        "acting as the guest's caller's group for a create",
    ),
];

/// Every call the filter for `role` allows, with why.
pub fn allowed(role: Role) -> impl Iterator<Item = &'static Allowed> {
    // A vCPU thread needs nothing beyond the common list but its KVM ioctls.
    let own = match role {
        Role::Vcpu => &[][..],
        Role::Vmm => VMM_SYSCALLS,
        Role::Fs => FS_SYSCALLS,
        Role::Api => API_SYSCALLS,
    };
    COMMON_SYSCALLS.iter().chain(own)
}

/// The ioctls `role` may make, each as (fd, request) with `None` for any fd.
fn ioctls(role: Role) -> Vec<(Option<u64>, u64)> {
    let stdin = libc::STDIN_FILENO as u64;
    // glibc's tcsetattr reads the settings (TCGETS) before it writes them (TCSETS).
    let mut list = vec![(Some(stdin), libc::TCGETS), (Some(stdin), libc::TCSETS)];
    match role {
        Role::Vcpu => {
            list.extend([
                (None, KVM_RUN),
                (None, KVM_GET_REGS),
                (None, KVM_SET_GSI_ROUTING),
            ]);
            list.extend(KVM_VCPU_SAVE.iter().map(|&r| (None, r)));
        }
        Role::Vmm => list.push((None, KVM_GET_CLOCK)),
        Role::Fs | Role::Api => {}
    }
    list
}

/// The filter for `role`.
pub fn filter(role: Role) -> Result<BpfProgram, SeccompError> {
    let err = |e: seccompiler::BackendError| SeccompError::Build(e.to_string());
    let eq = |arg, value| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value).map_err(err)
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &(nr, _, _) in allowed(role) {
        rules.insert(nr, Vec::new());
    }
    let mut ioctl_rules = Vec::new();
    for (fd, request) in ioctls(role) {
        let mut conds = vec![eq(1, request)?];
        if let Some(fd) = fd {
            conds.push(eq(0, fd)?);
        }
        ioctl_rules.push(SeccompRule::new(conds).map_err(err)?);
    }
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    if matches!(role, Role::Vmm | Role::Api) {
        // send() on a connected stream (std writes sockets with send and MSG_NOSIGNAL):
        // never to an address of the caller's choosing.
        let no_address =
            SeccompCondition::new(4, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, 0).map_err(err)?;
        rules.insert(
            libc::SYS_sendto,
            vec![SeccompRule::new(vec![no_address]).map_err(err)?],
        );
    }
    if role == Role::Vmm {
        rules.insert(
            libc::SYS_socket,
            vec![SeccompRule::new(vec![eq(0, libc::AF_UNIX as u64)?]).map_err(err)?],
        );

        // A process sharing this one's memory and filter, never a thread or a new program.
        rules.insert(
            libc::SYS_clone,
            vec![
                SeccompRule::new(vec![eq(0, crate::vmm::KEEPER_CLONE_FLAGS as u64)?])
                    .map_err(err)?,
            ],
        );
    }
    // Signals only to threads of this very process: SIGABRT (abort() on its own thread) and,
    // for the VMM thread, the kick that brings a vCPU out of KVM_RUN.
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    let mut signals = vec![libc::SIGABRT as u64];
    if role == Role::Vmm {
        signals.push(crate::signals::kick_signal() as u64);
    }
    let tgkill = signals
        .into_iter()
        .map(|sig| SeccompRule::new(vec![eq(0, pid)?, eq(2, sig)?]).map_err(err))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_tgkill, tgkill);
    // Never executable memory: a thread may grow its heap, not make code.
    let no_exec = SeccompCondition::new(
        2,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
        0,
    )
    .map_err(err)?;
    rules.insert(
        libc::SYS_mprotect,
        vec![SeccompRule::new(vec![no_exec]).map_err(err)?],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(err)?;
    BpfProgram::try_from(filter).map_err(err)
}

/// Installs `filter` (built for `role`) on the calling thread, after the SIGSYS reporter.
pub fn apply(filter: &BpfProgram, role: Role) -> Result<(), SeccompError> {
    install_sigsys_reporter().map_err(|e| SeccompError::Install(e.to_string()))?;
    ROLE.with(|r| r.set(Some(role)));
    seccompiler::apply_filter(filter).map_err(|e| SeccompError::Install(e.to_string()))
}

/// The fault-injection hook the tests use to prove the promises on a real process:
/// `EMBER_SELF_TEST=seccomp-vcpu|seccomp-vmm` makes that thread make a forbidden call right
/// after its filter is installed (the process must die by SIGSYS, naming it);
/// `EMBER_SELF_TEST=panic-vcpu|panic-vmm` makes it panic there (the process must exit with
/// code 7, the terminal restored). Either way it can only stop this very process, before the
/// guest runs.
pub fn self_test(role: Role, filtered: bool) {
    let Some(v) = std::env::var_os("EMBER_SELF_TEST") else {
        return;
    };
    let v = v.to_string_lossy();
    match v.split_once('-') {
        Some(("seccomp", who)) if who == role.tag() && filtered => {
            // SAFETY: getppid has no preconditions; the filter stops the process here.
            unsafe { libc::getppid() };
        }
        Some(("panic", who)) if who == role.tag() => {
            panic!("EMBER_SELF_TEST={v}: a deliberate panic in {}", role.name())
        }
        _ => {}
    }
}

/// Names the system calls most likely to be reported.
fn syscall_name(nr: i64) -> &'static str {
    match nr {
        // The calls checked by argument: the call is on the list, the arguments are not.
        libc::SYS_ioctl => "ioctl, a request not on the list",
        libc::SYS_tgkill => "tgkill, to another process or with a signal not on the list",
        libc::SYS_mprotect => "mprotect, asking for executable memory",
        libc::SYS_read => "read",
        libc::SYS_open => "open",
        libc::SYS_openat => "openat",
        libc::SYS_close => "close",
        libc::SYS_socket => "socket (other than a Unix socket on the VMM thread)",
        libc::SYS_connect => "connect",
        libc::SYS_sendto => "sendto (with a destination address, or on a vCPU thread)",
        libc::SYS_execve => "execve",
        libc::SYS_fork => "fork",
        libc::SYS_clone => "clone (other than the teardown keeper's)",
        libc::SYS_clone3 => "clone3",
        libc::SYS_kill => "kill",
        libc::SYS_getppid => "getppid",
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

/// `si_code` of a SIGSYS raised by a seccomp filter.
const SYS_SECCOMP: i32 = 1;

extern "C" fn report_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // A seccomp SIGSYS's siginfo carries si_code at byte 8 and the system call number at
    // byte 24 (after signo, errno, code, padding and the call address).
    let (code, nr) = if info.is_null() {
        (0, -1)
    } else {
        // SAFETY: the kernel passes a valid siginfo_t; both fields lie inside it.
        unsafe {
            let base = info as *const u8;
            (*(base.add(8) as *const i32), *(base.add(24) as *const i32))
        }
    };
    if code != SYS_SECCOMP {
        // Sent from outside (kill -SYS): no report, the default action as if unhandled.
        // SAFETY: signal(2) and raise(3) are async-signal-safe.
        unsafe {
            libc::signal(libc::SIGSYS, libc::SIG_DFL);
            libc::raise(libc::SIGSYS);
        }
        return;
    }
    let mut buf = [0u8; 256];
    let mut len = 0;
    // The role is a const-initialised thread-local Copy value: no allocation, no lock.
    let role = ROLE.with(|r| r.get()).map_or("a thread", Role::name);
    push(&mut buf, &mut len, b"ember: seccomp: ");
    push(&mut buf, &mut len, role.as_bytes());
    push(&mut buf, &mut len, b" made a forbidden system call ");
    push_num(&mut buf, &mut len, nr as u64);
    push(&mut buf, &mut len, b" (");
    push(&mut buf, &mut len, syscall_name(i64::from(nr)).as_bytes());
    push(
        &mut buf,
        &mut len,
        b"); this is a bug in ember, please report it\n",
    );
    crate::terminal::restore_from_signal_handler();
    // SAFETY: write(2), signal(2) and raise(3) are async-signal-safe; the buffer is live.
    // signal() is itself forbidden by both filters: as SIGSYS is blocked inside this handler,
    // the kernel then kills the process by SIGSYS at once (and signal + raise would do the
    // same on a thread without a filter).
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

    const ROLES: [Role; 3] = [Role::Vcpu, Role::Vmm, Role::Api];

    #[test]
    fn filters_compile_and_list_every_call_once() {
        for role in ROLES {
            filter(role).unwrap();
            let mut nrs: Vec<i64> = allowed(role).map(|&(n, _, _)| n).collect();
            let all = nrs.len();
            nrs.sort();
            nrs.dedup();
            assert_eq!(nrs.len(), all, "{role:?}");
        }
    }

    #[test]
    fn a_thread_under_each_filter_allocates_and_exits() {
        for role in ROLES {
            let f = filter(role).unwrap();
            std::thread::spawn(move || {
                apply(&f, role).unwrap();
                let big = vec![1u8; 8 << 20];
                let grown: Vec<u8> = big.iter().chain(big.iter()).copied().collect();
                assert_eq!(grown.len(), 16 << 20);
            })
            .join()
            .unwrap();
        }
    }

    /// Forks a child that builds and installs `role`'s filter (so the filter knows the
    /// child's pid) and then runs `call`; returns the signal that ended the child, if any.
    fn child_signal(role: Role, call: impl Fn()) -> Option<i32> {
        // SAFETY: the child builds a filter (glibc's malloc is fork-safe), installs it, makes
        // the call and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // No SIGSYS handler in the child: the trap's default action ends it.
            if let Ok(f) = filter(role)
                && seccompiler::apply_filter(&f).is_ok()
            {
                call();
            }
            // SAFETY: leaving the child without running the parent's exit handlers.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child with a live status word.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status))
    }

    /// Calls that must be refused to every ember thread; each is harmless if it got through.
    fn refused_to_both(role: Role) {
        let open = || {
            // SAFETY: a NUL-terminated path.
            unsafe { libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
        };
        assert_eq!(
            child_signal(role, open),
            Some(libc::SIGSYS),
            "{role:?} open"
        );
        let exec_memory = || {
            let mut page = [0u8; 8192];
            let addr = (page.as_mut_ptr() as usize + 4095) & !4095;
            // SAFETY: a page inside the child's own stack buffer; the filter stops it first.
            unsafe { libc::mprotect(addr as *mut _, 4096, libc::PROT_READ | libc::PROT_EXEC) };
        };
        assert_eq!(
            child_signal(role, exec_memory),
            Some(libc::SIGSYS),
            "{role:?} PROT_EXEC"
        );
        // SIGABRT is allowed to this process only: aim it at a `sleep` of our own instead.
        let mut victim = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let other = victim.id() as libc::c_long;
        let other_process = move || {
            // SAFETY: signalling a sleep we started; the filter stops it first.
            unsafe { libc::syscall(libc::SYS_tgkill, other, other, libc::SIGABRT) };
        };
        assert_eq!(
            child_signal(role, other_process),
            Some(libc::SIGSYS),
            "{role:?} tgkill"
        );
        let _ = victim.kill();
        let _ = victim.wait();
        // abort() still dies by SIGABRT, not by a misleading seccomp report.
        assert_eq!(
            child_signal(role, || std::process::abort()),
            Some(libc::SIGABRT)
        );
        assert_eq!(child_signal(role, || ()), None);
    }

    #[test]
    fn the_vmm_thread_can_serve_a_vsock_stream_but_not_send_to_addresses() {
        use std::io::{Read, Write};
        // What the vsock device does with a stream's host side, through std as it does it.
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let stream = move || {
            let (mut a, mut b) = (&a, &b);
            let mut buf = [0u8; 5];
            if a.write_all(b"hello").is_err()
                || b.read_exact(&mut buf).is_err()
                || a.shutdown(std::net::Shutdown::Write).is_err()
                || b.read(&mut buf).ok() != Some(0)
            {
                // SAFETY: leaving the child at once, with a status the parent sees.
                unsafe { libc::_exit(1) };
            }
        };
        assert_eq!(child_signal(Role::Vmm, stream), None);
        let to_an_address = || {
            // SAFETY: sockaddr_un is plain data.
            let addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
            // SAFETY: a sendto with a (bogus) destination; the filter stops it first.
            unsafe {
                libc::sendto(
                    1000,
                    std::ptr::null(),
                    0,
                    0,
                    &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                )
            };
        };
        assert_eq!(child_signal(Role::Vmm, to_an_address), Some(libc::SIGSYS));
    }

    #[test]
    fn the_vmm_thread_cannot_make_kvm_ioctls_or_open_files() {
        refused_to_both(Role::Vmm);
        let create_vm = || {
            // SAFETY: an ioctl on a closed fd number; the filter stops it before the kernel.
            unsafe { libc::ioctl(1000, 0xae01, 0) };
        };
        assert_eq!(child_signal(Role::Vmm, create_vm), Some(libc::SIGSYS));
        let other_signal = || {
            // SAFETY: signal 0 to ourselves only checks; the filter stops it first.
            unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::getpid(),
                    libc::syscall(libc::SYS_gettid),
                    0,
                )
            };
        };
        assert_eq!(child_signal(Role::Vmm, other_signal), Some(libc::SIGSYS));
    }

    #[test]
    fn a_vcpu_thread_cannot_read_or_close() {
        refused_to_both(Role::Vcpu);
        let read = || {
            let mut b = [0u8; 1];
            // SAFETY: a live one-byte buffer; fd -1 fails at once if the filter lets it by.
            unsafe { libc::read(-1, b.as_mut_ptr().cast(), 1) };
        };
        assert_eq!(child_signal(Role::Vcpu, read), Some(libc::SIGSYS));
        let close = || {
            // SAFETY: closing a number; the filter stops it first.
            unsafe { libc::close(1000) };
        };
        assert_eq!(child_signal(Role::Vcpu, close), Some(libc::SIGSYS));
    }

    /// The backticked names in the first column of the table that follows `heading`.
    fn table_names(doc: &str, heading: &str) -> Vec<String> {
        let at = doc
            .find(heading)
            .unwrap_or_else(|| panic!("{heading} missing"));
        let mut names = Vec::new();
        let mut in_table = false;
        for line in doc[at..].lines().skip(1) {
            if let Some(row) = line.strip_prefix("| ") {
                in_table = true;
                let first = row.split(" |").next().unwrap_or("");
                names.extend(first.split('`').skip(1).step_by(2).map(String::from));
            } else if in_table {
                break;
            }
        }
        names.sort();
        names
    }

    #[test]
    fn docs_security_md_lists_exactly_the_allowed_calls() {
        let doc = include_str!("../docs/security.md");
        let mut common: Vec<String> = COMMON_SYSCALLS.iter().map(|a| a.1.into()).collect();
        common.sort();
        assert_eq!(table_names(doc, "**Both filters**"), common);
        let mut vmm: Vec<String> = VMM_SYSCALLS.iter().map(|a| a.1.into()).collect();
        vmm.sort();
        assert_eq!(table_names(doc, "**The VMM thread**"), vmm);
        let mut fs: Vec<String> = FS_SYSCALLS.iter().map(|a| a.1.into()).collect();
        fs.sort();
        assert_eq!(table_names(doc, "**A virtio-fs thread**"), fs);
    }

    #[test]
    fn kvm_ioctl_numbers_are_the_kernels() {
        // The values <linux/kvm.h> gives on x86_64.
        assert_eq!(
            kvm_ior(0x81, std::mem::size_of::<kvm_bindings::kvm_regs>()),
            KVM_GET_REGS
        );
        assert_eq!(
            KVM_VCPU_SAVE,
            [
                0x8004_ae98,
                0x8138_ae83,
                0x9000_aea4,
                0x8188_aea6,
                0x8080_aea1,
                0x8400_ae8e,
                0xaea3,
                0xc008_ae88,
                0xc008_ae91,
                0x8040_ae9f,
            ]
        );
        assert_eq!(KVM_GET_CLOCK, 0x8030_ae7c);
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
        assert_eq!(
            syscall_name(libc::SYS_ioctl),
            "ioctl, a request not on the list"
        );
    }
}
