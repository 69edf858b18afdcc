//! Deferred teardown: KVM destroys a VM when its last fd closes, and on these hosts that takes
//! 1.7 to 15 ms (median per run; docs/startup-latency.md), most of it waiting for RCU and SRCU
//! grace periods. With [`Teardown::AfterExit`] the `ember` process hands that wait to a
//! *keeper*: a child that shares its memory (`CLONE_VM`), holds a copy of the VM fd and
//! nothing else, and blocks on a pipe until the process has exited. The user's `wait` returns
//! without the teardown; the keeper then exits, and the kernel destroys the VM and frees guest
//! memory in it. The host CPU is still spent: `ember bench` reaps the keeper (it is a child
//! subreaper) and counts its CPU and its end, so the cost shows on a second clock.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// When the kernel's share of the teardown happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Teardown {
    /// Before [`super::Vmm::run`] returns: the VM is gone when it does (what a library caller
    /// that runs many VMs in one process needs).
    #[default]
    Inline,
    /// After this process exits, in a keeper process that shares its memory. Only for a
    /// process that exits soon after [`super::Vmm::run`] returns: guest memory stays mapped
    /// until then.
    AfterExit,
}

/// The keeper's stack: it makes five system calls and no function calls that need more.
const KEEPER_STACK: usize = 64 * 1024;

/// What the keeper keeps: everything else in its copy of the fd table it closes.
#[repr(C)]
struct KeeperArgs {
    vm: RawFd,
    pipe: RawFd,
}

/// A keeper made ready while the VMM may still create pipes (before its seccomp filter).
pub(crate) struct Handoff {
    read: OwnedFd,
    write: OwnedFd,
}

impl Handoff {
    /// Creates the pipe the keeper waits on: it reads end-of-file once every copy of the write
    /// end, which only this process holds, is closed, that is when the process has exited.
    pub(crate) fn prepare() -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just created and are owned by nothing else.
        Ok(unsafe {
            Self {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        })
    }

    /// Starts the keeper holding `vm`. On success the VM outlives this process's own fds, and
    /// the caller must leave guest memory mapped (the keeper's exit unmaps it). The vCPU
    /// threads must have stopped: the keeper shares the address space, not the threads.
    pub(crate) fn start(self, vm: RawFd) -> io::Result<()> {
        let args = Box::into_raw(Box::new(KeeperArgs {
            vm,
            pipe: self.read.as_raw_fd(),
        }));
        let stack = Box::into_raw(vec![0u8; KEEPER_STACK].into_boxed_slice());
        // The stack grows down from its 16-byte-aligned top.
        let top = (stack as *mut u8 as usize + KEEPER_STACK) & !15;
        // SAFETY: the keeper runs on its own leaked stack with leaked arguments, touches no
        // thread-local state, allocates nothing and makes raw system calls only, so sharing
        // the address space with this process (CLONE_VM) cannot race with it.
        let pid = unsafe {
            libc::clone(
                keeper,
                top as *mut libc::c_void,
                KEEPER_CLONE_FLAGS,
                args.cast(),
            )
        };
        if pid < 0 {
            let e = io::Error::last_os_error();
            // SAFETY: no keeper exists to use them; both came from Box::into_raw above.
            unsafe {
                drop(Box::from_raw(args));
                drop(Box::from_raw(stack));
            }
            return Err(e);
        }
        // The write end stays open as long as the process: its close at exit wakes the keeper.
        std::mem::forget(self.write);
        Ok(())
    }
}

/// The keeper's `clone` flags, which the VMM thread's seccomp filter allows and nothing else:
/// the address space shared, the fd table copied, SIGCHLD to whoever reaps it.
pub(crate) const KEEPER_CLONE_FLAGS: libc::c_int = libc::CLONE_VM | libc::SIGCHLD;

/// The keeper's whole life: close every fd but the VM and the pipe, wait for end-of-file, exit.
extern "C" fn keeper(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the KeeperArgs leaked for the keeper by `Handoff::start`.
    let a = unsafe { &*(arg as *const KeeperArgs) };
    let (lo, hi) = if a.vm < a.pipe {
        (a.vm, a.pipe)
    } else {
        (a.pipe, a.vm)
    };
    close_except(lo, hi);
    let mut byte = 0u8;
    loop {
        // SAFETY: reads at most one byte into a live local.
        let r = unsafe {
            raw_syscall3(
                libc::SYS_read,
                a.pipe as u64,
                &mut byte as *mut u8 as u64,
                1,
            )
        };
        if r != -(libc::EINTR as i64) {
            break;
        }
    }
    // SAFETY: ends this task only; its fds and the last reference to the address space go with
    // it, and with them the VM.
    unsafe { raw_syscall3(libc::SYS_exit, 0, 0, 0) };
    0
}

/// Closes every fd of the calling task except `lo` and `hi` (`lo < hi`).
fn close_except(lo: RawFd, hi: RawFd) {
    let ranges = [
        (0, lo as i64 - 1),
        (lo as i64 + 1, hi as i64 - 1),
        (hi as i64 + 1, u32::MAX as i64),
    ];
    for (first, last) in ranges {
        if first > last {
            continue;
        }
        // SAFETY: close_range only closes this task's own fds.
        let r = unsafe { raw_syscall3(libc::SYS_close_range, first as u64, last as u64, 0) };
        if r < 0 {
            // A kernel before 5.9: one close per fd, as far as fds usually go.
            for fd in first..=last.min(4095) {
                // SAFETY: as above.
                unsafe { raw_syscall3(libc::SYS_close, fd as u64, 0, 0) };
            }
        }
    }
}

/// A system call with no libc wrapper in between: the keeper shares the parent's thread
/// pointer, so it must not write `errno`.
///
/// # Safety
/// The caller answers for what the call does with its arguments.
unsafe fn raw_syscall3(nr: i64, a: u64, b: u64, c: u64) -> i64 {
    let ret: i64;
    // SAFETY: the x86_64 Linux system call convention; rcx and r11 are clobbered.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr => ret,
            in("rdi") a,
            in("rsi") b,
            in("rdx") c,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret
}
