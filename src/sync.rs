//! Threads helping each other: locking that survives a panicking thread, and a value computed
//! on a helper thread.

use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::placement::{self, Placement};

/// Locks `m`, recovering it if a thread panicked while holding it: device state stays usable
/// and a panic is reported through the exit path, not by poisoning every later access.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A value computed on a thread of its own while the caller goes on with other work: on a host
/// with a CPU to spare, a slow call (an ioctl that traps to the hypervisor, a truncation) then
/// costs the caller nothing. The thread starts with the VMM's stop signals blocked, so a Ctrl-C
/// still reaches the event loop. Dropped unawaited, it is joined.
pub struct Background<T: Send + 'static> {
    thread: Option<JoinHandle<T>>,
}

impl<T: Send + 'static> Background<T> {
    /// Starts computing `f` on a thread named `name`, off this thread's CPU with a placement
    /// ([`placement::spawn`]).
    pub fn start(
        name: &str,
        placement: Option<&Placement>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::io::Result<Self> {
        // Cannot fail for valid signal numbers; without it the thread would just not block them.
        let _blocked = crate::signals::SignalsBlocked::block(&crate::signals::STOP_SIGNALS).ok();
        let builder = std::thread::Builder::new().name(name.into());
        let thread = placement::spawn(placement, builder, f)?;
        Ok(Self {
            thread: Some(thread),
        })
    }

    /// Waits for the value; `None` if computing it panicked (the panic hook has reported it).
    pub fn wait(mut self) -> Option<T> {
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl<T: Send + 'static> Drop for Background<T> {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            drop(t.join());
        }
    }
}
