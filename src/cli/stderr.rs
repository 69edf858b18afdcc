//! ember's stderr: written without ever blocking the thread that writes.
//!
//! A stderr nobody reads (a pipe left full) must not stall the event loop behind a log line:
//! then `--timeout`, SIGTERM and Ctrl-A x would wait on the reader. So a pipe or terminal
//! stderr is opened again, non-blocking, for ember's own use (a description of its own: the
//! shell's stays as it was), and what it cannot take at once waits in a bounded buffer, sent
//! before the next message and at exit. What does not fit is dropped and counted. A regular
//! file or a socket keeps the inherited descriptor: a file does not block, and reopening a
//! socket is not possible.

use std::os::fd::RawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The most bytes kept for a stderr that cannot take them yet.
const PENDING_MAX: usize = 64 << 10;
/// How long the exit waits for a stderr that takes nothing at all.
const STALL_LIMIT: Duration = Duration::from_millis(50);

struct Sink {
    fd: RawFd,
    pending: Vec<u8>,
    dropped: u64,
}

static SINK: Mutex<Option<Sink>> = Mutex::new(None);

/// What one write came to.
enum Wrote {
    /// This many bytes.
    Some(usize),
    /// None now: try again when the fd is writable.
    Later,
    /// None ever: the reader is gone or the device refuses.
    Never,
}

fn write_fd(fd: RawFd, bytes: &[u8]) -> Wrote {
    loop {
        // SAFETY: writing from a live buffer of `bytes.len()` bytes.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n >= 0 {
            return Wrote::Some(n as usize);
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Wrote::Later,
            _ => return Wrote::Never,
        }
    }
}

impl Sink {
    /// Sends as much of the pending bytes as the fd takes now; whether none are left.
    fn push(&mut self) -> bool {
        while !self.pending.is_empty() {
            match write_fd(self.fd, &self.pending) {
                Wrote::Some(n) => {
                    self.pending.drain(..n);
                }
                Wrote::Later => return false,
                Wrote::Never => {
                    self.dropped += self.pending.len() as u64;
                    self.pending.clear();
                }
            }
        }
        true
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        if self.push() {
            while !rest.is_empty() {
                match write_fd(self.fd, rest) {
                    Wrote::Some(n) => rest = &rest[n..],
                    Wrote::Later => break,
                    Wrote::Never => {
                        self.dropped += rest.len() as u64;
                        return;
                    }
                }
            }
        }
        let room = PENDING_MAX.saturating_sub(self.pending.len());
        let keep = rest.len().min(room);
        self.pending.extend_from_slice(&rest[..keep]);
        self.dropped += (rest.len() - keep) as u64;
    }
}

/// A descriptor for writing to `fd` that never blocks: a pipe, FIFO or terminal opened again
/// through /proc/self/fd, non-blocking (a description of ember's own: whoever shares `fd`
/// keeps its flags); `fd` itself for anything else (a file does not block; a socket cannot be
/// opened again). Call before any seccomp filter.
pub fn nonblocking(fd: RawFd) -> RawFd {
    // SAFETY: `st` is plain data that fstat fills.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `fd` may be closed, which fstat reports.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return fd;
    }
    if !matches!(st.st_mode & libc::S_IFMT, libc::S_IFIFO | libc::S_IFCHR) {
        return fd;
    }
    let Ok(path) = std::ffi::CString::new(format!("/proc/self/fd/{fd}")) else {
        return fd;
    };
    // SAFETY: a NUL-terminated path; the flags make a fresh description.
    let own = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    // A pipe whose reader is gone cannot be opened (ENXIO); `fd` then fails fast itself.
    if own >= 0 { own } else { fd }
}

/// Sets stderr up: call once, first thing, before any thread or seccomp filter (it opens
/// `/proc/self/fd/2`).
pub fn init() {
    let fd = nonblocking(libc::STDERR_FILENO);
    *SINK.lock().unwrap_or_else(|p| p.into_inner()) = Some(Sink {
        fd,
        pending: Vec::new(),
        dropped: 0,
    });
}

/// Writes `bytes` to stderr without blocking: what stderr cannot take now waits (bounded) for
/// the next write or [`flush`].
pub fn write(bytes: &[u8]) {
    // A panic hook writing while the lock is held (by this very thread) must not wait.
    let mut sink = match SINK.try_lock() {
        Ok(s) => s,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => match SINK.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        },
    };
    match sink.as_mut() {
        Some(s) => s.write(bytes),
        None => {
            write_fd(libc::STDERR_FILENO, bytes);
        }
    }
}

/// Writes what waits, waiting for stderr as long as it keeps taking bytes; a stderr that takes
/// nothing for [`STALL_LIMIT`] loses the rest. Returns how many bytes were lost in all.
pub fn flush() -> u64 {
    let mut guard = SINK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(sink) = guard.as_mut() else {
        return 0;
    };
    let mut progress = Instant::now();
    loop {
        let before = sink.pending.len();
        if sink.push() {
            break;
        }
        if sink.pending.len() < before {
            progress = Instant::now();
        }
        let left = STALL_LIMIT.saturating_sub(progress.elapsed());
        if left.is_zero() {
            sink.dropped += sink.pending.len() as u64;
            sink.pending.clear();
            break;
        }
        let mut pfd = libc::pollfd {
            fd: sink.fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one live pollfd; the timeout is in milliseconds.
        unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
    }
    sink.dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (RawFd, RawFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two fds.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        assert_eq!(rc, 0);
        (fds[0], fds[1])
    }

    #[test]
    fn a_full_pipe_keeps_a_bounded_tail_and_counts_the_rest() {
        let (r, w) = pipe();
        let mut s = Sink {
            fd: w,
            pending: Vec::new(),
            dropped: 0,
        };
        let line = [b'x'; 1000];
        // A pipe holds 64 KiB; 300 KB more than it and the buffer can take.
        for _ in 0..300 {
            s.write(&line);
        }
        assert_eq!(s.pending.len(), PENDING_MAX);
        let held = 300 * 1000 - PENDING_MAX as u64 - s.dropped;
        assert!((60_000..=70_000).contains(&held), "{held}");
        // The reader comes back: what waited goes out first.
        let mut buf = vec![0u8; 1 << 20];
        // SAFETY: reading into a live buffer.
        unsafe { libc::read(r, buf.as_mut_ptr().cast(), buf.len()) };
        assert!(!s.push() || s.pending.is_empty());
        // SAFETY: closing our own fds.
        unsafe {
            libc::close(r);
            libc::close(w);
        }
    }

    #[test]
    fn a_gone_reader_drops_everything_at_once() {
        let (r, w) = pipe();
        // SAFETY: closing our own read end.
        unsafe { libc::close(r) };
        let mut s = Sink {
            fd: w,
            pending: Vec::new(),
            dropped: 0,
        };
        s.write(b"lost\n");
        assert_eq!((s.pending.len(), s.dropped), (0, 5));
        // SAFETY: closing our own fd.
        unsafe { libc::close(w) };
    }
}
