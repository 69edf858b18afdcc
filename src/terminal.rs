//! Raw mode for a terminal stdin, undone on every way out: normal return, error, signal (via
//! the event loop) and panic (via the hook in main).

use std::sync::{Mutex, OnceLock};

use vmm_sys_util::terminal::Terminal;

/// The termios stdin had before ember changed it.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// The same termios, for a signal handler, which may not take a lock.
static SAVED_FOR_SIGNALS: OnceLock<libc::termios> = OnceLock::new();

/// Whether fd 0 is a terminal.
pub fn stdin_is_tty() -> bool {
    // SAFETY: isatty only inspects the fd.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 }
}

/// Puts a terminal stdin in raw mode, remembering how it was. Returns whether it did.
pub fn enter_raw_mode() -> bool {
    if !stdin_is_tty() {
        return false;
    }
    // SAFETY: termios is plain data, filled by tcgetattr.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd 0 is a terminal and `saved` is a live termios.
    if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
        return false;
    }
    if std::io::stdin().lock().set_raw_mode().is_err() {
        return false;
    }
    let _ = SAVED_FOR_SIGNALS.set(saved);
    *SAVED.lock().unwrap_or_else(|p| p.into_inner()) = Some(saved);
    true
}

/// Restores the terminal if ember changed it; safe to call any number of times.
pub fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(t) = saved {
        // SAFETY: restores the termios read from this same terminal.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
    }
}

/// Restores the terminal from a signal handler (the seccomp reporter): no lock, no
/// allocation, one `tcsetattr` (an ioctl both seccomp filters allow on stdin). Harmless when
/// the terminal was already restored or never changed.
pub fn restore_from_signal_handler() {
    if let Some(t) = SAVED_FOR_SIGNALS.get() {
        // SAFETY: tcsetattr is async-signal-safe; `t` was read from this same terminal.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t) };
    }
}
