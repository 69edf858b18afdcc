//! Locking that survives a panicking thread.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, recovering it if a thread panicked while holding it: device state stays usable
/// and a panic is reported through the exit path, not by poisoning every later access.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
