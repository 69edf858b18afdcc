//! Signals ember uses: the real-time signal that kicks a vCPU thread out of KVM_RUN, and a
//! signalfd through which the event loop reads SIGINT, SIGTERM and SIGHUP.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd};

/// The signal that kicks vCPU threads out of KVM_RUN (its handler does nothing: the point is
/// the EINTR).
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Registers the kick signal's no-op handler (once per process is enough; again is harmless).
pub fn register_kick_handler() -> std::io::Result<()> {
    extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    vmm_sys_util::signal::register_signal_handler(kick_signal(), noop)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// The signals that stop a VM: the VMM thread reads them from a [`SignalFd`].
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Signals blocked in the calling thread until dropped, which restores the mask it found. A
/// thread started meanwhile inherits the block from its first instruction: ember's helper and
/// vCPU threads are started inside one for [`STOP_SIGNALS`], so a SIGINT never reaches them
/// (its default action would end ember); it is the VMM thread's, read from its [`SignalFd`].
pub struct SignalsBlocked {
    set: libc::sigset_t,
    old_mask: libc::sigset_t,
}

impl SignalsBlocked {
    /// Blocks `signals` in this thread.
    pub fn block(signals: &[libc::c_int]) -> std::io::Result<Self> {
        let set = vmm_sys_util::signal::create_sigset(signals)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        // SAFETY: sigset_t is plain data; zeroed is a valid set for the call to fill.
        let mut old_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are to live sigset_t values.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old_mask) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(Self { set, old_mask })
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask pthread_sigmask filled in.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut()) };
    }
}

/// A signalfd for a set of signals, blocked in the calling thread while it lives (threads
/// started meanwhile inherit the mask).
pub struct SignalFd {
    fd: File,
    // After `fd`: the descriptor closes before the mask is restored.
    _blocked: SignalsBlocked,
}

impl SignalFd {
    /// Blocks `signals` in this thread and opens a signalfd for them.
    pub fn new(signals: &[libc::c_int]) -> std::io::Result<Self> {
        let blocked = SignalsBlocked::block(signals)?;
        // SAFETY: the blocked set is a valid sigset; -1 asks for a new fd.
        let fd =
            unsafe { libc::signalfd(-1, &blocked.set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            // `blocked` restores the mask.
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a fresh fd that nothing else owns.
        let fd = unsafe { File::from_raw_fd(fd) };
        Ok(Self {
            fd,
            _blocked: blocked,
        })
    }

    /// The next pending signal, if any.
    pub fn read(&self) -> Option<i32> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: the buffer is a live signalfd_siginfo of `size` bytes.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                &mut info as *mut _ as *mut libc::c_void,
                size,
            )
        };
        (n == size as isize).then_some(info.ssi_signo as i32)
    }
}

impl AsFd for SignalFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_signal_arrives_through_the_fd() {
        // In a thread of its own: the mask is per thread, and other tests must not see it.
        std::thread::spawn(|| {
            let fd = SignalFd::new(&[libc::SIGUSR2]).unwrap();
            assert_eq!(fd.read(), None);
            // SAFETY: signals this very thread, where SIGUSR2 is blocked.
            unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR2) };
            assert_eq!(fd.read(), Some(libc::SIGUSR2));
        })
        .join()
        .unwrap();
    }
}
