//! The host side of a `process`'s channel, on the event loop: the guest's frames
//! ([`super::frames`]) to ember's stdout and stderr, ember's stdin to the guest, the program's
//! start and exit recorded, and the VM stopped once the program has exited and every byte it
//! wrote has been read.
//!
//! Nothing here blocks: stdout and stderr are written as far as they take bytes, the rest
//! waits (bounded) until they are writable again, and while too much waits the channel is not
//! read, so the guest's program waits on its own writes (vsock's credit) instead of ember
//! growing or dropping anything. stdin is read only while the channel has room for it.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::frames;
use crate::exit::{ExitReason, ExitSignal};
use crate::sync::lock;
use crate::timing::{Phase, Timeline};
use crate::vmm::events::Escape;

/// Output waiting for stdout or stderr, most: past it the channel is not read.
const PENDING_MAX: usize = 1 << 20;
/// Input read from stdin at a time.
const STDIN_CHUNK: usize = 16 << 10;
/// How long the end of a run waits for a stdout or stderr that takes nothing at all.
const FLUSH_STALL: Duration = Duration::from_secs(5);

/// How the program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramExit {
    /// It exited with this status.
    Exited(u8),
    /// A signal killed it.
    Signaled(u8),
}

impl ProgramExit {
    /// The status a shell would give: the exit status, or 128 + the signal.
    pub fn status(self) -> u8 {
        match self {
            ProgramExit::Exited(c) => c,
            ProgramExit::Signaled(s) => 128u8.wrapping_add(s),
        }
    }
}

/// What became of the program, as far as the channel said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandResult {
    /// Whether the guest connected the channel.
    pub connected: bool,
    /// Whether the program started.
    pub started: bool,
    /// How it ended, if it did.
    pub exit: Option<ProgramExit>,
    /// Why the init could not get it going: (kind, message), kinds in [`frames`].
    pub failure: Option<(u8, String)>,
    /// Bytes of output that stdout or stderr never took (they stopped taking any).
    pub lost_output: u64,
}

/// Where the program's stdio goes on the host.
#[derive(Debug, Clone, Copy)]
pub struct ProcessIo {
    /// Input for the program, if any (read only while the channel has room).
    pub stdin: Option<RawFd>,
    /// The program's stdout (and its terminal's output).
    pub stdout: RawFd,
    /// The program's stderr.
    pub stderr: RawFd,
    /// Whether stdin is a terminal: then Ctrl-A x stops the VM.
    pub escape: bool,
    /// The terminal's size, for a program on a terminal.
    pub winsize: Option<(u16, u16)>,
}

/// One of stdout, stderr: what it has not taken yet.
struct Output {
    fd: RawFd,
    pending: VecDeque<u8>,
    watched: bool,
    /// It failed for good (closed, full): bytes for it are counted, not kept.
    dead: bool,
}

impl Output {
    fn new(fd: RawFd) -> Self {
        Self {
            fd,
            pending: VecDeque::new(),
            watched: false,
            dead: false,
        }
    }

    /// Writes what it takes now; returns the bytes lost for good.
    fn push(&mut self, more: &[u8]) -> u64 {
        if self.dead {
            return more.len() as u64;
        }
        self.pending.extend(more);
        self.flush()
    }

    fn flush(&mut self) -> u64 {
        while !self.pending.is_empty() {
            let (a, _) = self.pending.as_slices();
            // SAFETY: writing from a live buffer of `a.len()` bytes.
            let n = unsafe { libc::write(self.fd, a.as_ptr().cast(), a.len()) };
            if n > 0 {
                self.pending.drain(..n as usize);
                continue;
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return 0,
                _ => {
                    self.dead = true;
                    let lost = self.pending.len() as u64;
                    self.pending.clear();
                    return lost;
                }
            }
        }
        0
    }
}

/// The session: one per VM with a `process`.
pub struct Session {
    stream: UnixStream,
    input: Option<RawFd>,
    /// Whether stdin can be polled (a pipe, a terminal); a file is read whenever there is
    /// room.
    input_polled: bool,
    escape: Escape,
    out: Output,
    err: Output,
    /// Bytes read from the channel, not yet a whole frame.
    inbuf: Vec<u8>,
    /// Frames for the guest, not yet written to the channel.
    to_guest: Vec<u8>,
    stream_events: EventSet,
    result: Arc<Mutex<CommandResult>>,
    exit: Arc<ExitSignal>,
    timeline: Arc<Timeline>,
    done: bool,
}

impl Session {
    /// A session on `stream` (the host end of the channel, non-blocking), with `io`; it
    /// records into `result` and stops the VM through `exit`.
    pub fn new(
        stream: UnixStream,
        io: ProcessIo,
        result: Arc<Mutex<CommandResult>>,
        exit: Arc<ExitSignal>,
        timeline: Arc<Timeline>,
    ) -> Self {
        let mut to_guest = Vec::new();
        if let Some((rows, cols)) = io.winsize {
            let mut size = rows.to_le_bytes().to_vec();
            size.extend_from_slice(&cols.to_le_bytes());
            frames::encode(frames::WINSIZE, &size, &mut to_guest);
        }
        if io.stdin.is_none() {
            frames::encode(frames::STDIN_EOF, &[], &mut to_guest);
        }
        Self {
            stream,
            input: io.stdin,
            input_polled: false,
            escape: Escape::new(io.escape),
            out: Output::new(io.stdout),
            err: Output::new(io.stderr),
            inbuf: Vec::new(),
            to_guest,
            stream_events: EventSet::empty(),
            result,
            exit,
            timeline,
            done: false,
        }
    }

    fn pending_output(&self) -> usize {
        self.out.pending.len() + self.err.pending.len()
    }

    /// Handles the whole frames read so far.
    fn frames(&mut self) {
        let mut at = 0;
        loop {
            let (kind, payload, len) = match frames::decode(&self.inbuf[at..]) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(len) => {
                    crate::guest_log!(
                        crate::guest_log::LogLimit::new("the process channel"),
                        log::Level::Warn,
                        "a frame of {len} bytes: the guest broke the protocol; the channel is closed"
                    );
                    self.inbuf.clear();
                    self.finish_channel();
                    return;
                }
            };
            let lost = match kind {
                frames::STDOUT => self.out.push(payload),
                frames::STDERR => self.err.push(payload),
                frames::STARTED => {
                    lock(&self.result).started = true;
                    self.timeline.mark(Phase::WorkloadStart);
                    0
                }
                frames::EXIT => {
                    let exit = match payload {
                        [0, code, ..] => Some(ProgramExit::Exited(*code)),
                        [1, sig, ..] => Some(ProgramExit::Signaled(*sig)),
                        _ => None,
                    };
                    lock(&self.result).exit = exit;
                    if let Some(e) = exit {
                        self.exit.set_guest_status(e.status());
                    }
                    self.done = true;
                    0
                }
                frames::FAILED => {
                    let (k, text) = payload
                        .split_first()
                        .unwrap_or((&frames::FAILED_SETUP, &[]));
                    lock(&self.result).failure =
                        Some((*k, crate::config::one_line(&String::from_utf8_lossy(text))));
                    0
                }
                _ => 0,
            };
            lock(&self.result).lost_output += lost;
            at += len;
        }
        self.inbuf.drain(..at);
    }

    /// The guest closed the channel (or broke it): once the output is written, the run is
    /// over as far as the session goes.
    fn finish_channel(&mut self) {
        self.done = true;
    }

    /// Reads the channel while the outputs can take more.
    fn read_stream(&mut self) {
        let mut buf = [0u8; 64 << 10];
        while self.pending_output() < PENDING_MAX && !self.done {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.finish_channel();
                    break;
                }
                Ok(n) => {
                    self.inbuf.extend_from_slice(&buf[..n]);
                    self.frames();
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    /// Reads stdin into frames for the guest while the channel has room.
    fn read_input(&mut self) {
        let Some(fd) = self.input else { return };
        if !self.to_guest.is_empty() {
            return;
        }
        let mut buf = vec![0u8; STDIN_CHUNK];
        // SAFETY: reading into a live buffer of `buf.len()` bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        match usize::try_from(n) {
            Ok(0) => self.close_input(),
            Ok(n) => match self.escape.apply(&buf[..n]) {
                Some(bytes) => {
                    for chunk in bytes.chunks(frames::MAX_PAYLOAD) {
                        frames::encode(frames::STDIN, chunk, &mut self.to_guest);
                    }
                }
                None => self.exit.request(ExitReason::Escape),
            },
            Err(_) => match std::io::Error::last_os_error().kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => {}
                _ => self.close_input(),
            },
        }
    }

    fn close_input(&mut self) {
        self.input = None;
        frames::encode(frames::STDIN_EOF, &[], &mut self.to_guest);
    }

    fn write_stream(&mut self) {
        while !self.to_guest.is_empty() {
            match self.stream.write(&self.to_guest) {
                Ok(0) => break,
                Ok(n) => {
                    self.to_guest.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    /// Sets what the loop watches: the channel for reading while the outputs have room and
    /// for writing while frames wait (or a file stdin has more), stdin while the channel has
    /// room, each output while bytes wait for it.
    fn rewatch(&mut self, ops: &mut EventOps) {
        let mut want = EventSet::empty();
        if !self.done && self.pending_output() < PENDING_MAX {
            want |= EventSet::IN;
        }
        let file_input = self.input.is_some() && !self.input_polled;
        if !self.to_guest.is_empty() || file_input {
            want |= EventSet::OUT;
        }
        let fd = self.stream.as_raw_fd();
        if want != self.stream_events {
            let r = if self.stream_events.is_empty() {
                ops.add(Events::new_raw(fd, want))
            } else if want.is_empty() {
                ops.remove(Events::empty_raw(fd))
            } else {
                ops.modify(Events::new_raw(fd, want))
            };
            if r.is_ok() {
                self.stream_events = want;
            }
        }
        for o in [&mut self.out, &mut self.err] {
            let need = !o.pending.is_empty() && !o.dead;
            if need != o.watched {
                let r = if need {
                    ops.add(Events::new_raw(o.fd, EventSet::OUT))
                } else {
                    ops.remove(Events::empty_raw(o.fd))
                };
                // A file cannot be watched (and never makes a write wait).
                o.watched = need && r.is_ok();
            }
        }
        if self.done && self.pending_output() == 0 && self.to_guest.is_empty() {
            self.exit.request(ExitReason::WorkloadExited);
        }
    }

    /// After the VM has stopped: writes what the program wrote that is still waiting, for
    /// as long as stdout and stderr keep taking it (a reader that takes nothing for
    /// [`FLUSH_STALL`] loses the rest, counted).
    pub fn finish(&mut self) {
        // What the guest wrote last may still sit in the channel.
        self.done = false;
        self.read_stream();
        let mut progress = Instant::now();
        loop {
            let before = self.pending_output();
            let lost = self.out.flush() + self.err.flush();
            lock(&self.result).lost_output += lost;
            let left = self.pending_output();
            if left == 0 {
                return;
            }
            if left < before {
                progress = Instant::now();
            }
            let wait = FLUSH_STALL.saturating_sub(progress.elapsed());
            if wait.is_zero() {
                lock(&self.result).lost_output += left as u64;
                self.out.pending.clear();
                self.err.pending.clear();
                return;
            }
            let mut pfds: Vec<libc::pollfd> = [&self.out, &self.err]
                .iter()
                .filter(|o| !o.pending.is_empty())
                .map(|o| libc::pollfd {
                    fd: o.fd,
                    events: libc::POLLOUT,
                    revents: 0,
                })
                .collect();
            // SAFETY: a live array of as many pollfds as passed.
            unsafe {
                libc::poll(
                    pfds.as_mut_ptr(),
                    pfds.len() as libc::nfds_t,
                    wait.as_millis().clamp(1, 100) as i32,
                )
            };
        }
    }
}

impl MutEventSubscriber for Session {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let set = events.event_set();
        let input_before = self.input.filter(|_| self.input_polled);
        if fd == self.stream.as_raw_fd() {
            if set.intersects(EventSet::IN | EventSet::HANG_UP) {
                self.read_stream();
            }
            if set.intersects(EventSet::OUT) {
                self.write_stream();
                if !self.input_polled {
                    self.read_input();
                    self.write_stream();
                }
            }
        } else if Some(fd) == self.input {
            if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
                self.read_input();
                self.write_stream();
            }
        } else if fd == self.out.fd || fd == self.err.fd {
            let lost = self.out.flush() + self.err.flush();
            lock(&self.result).lost_output += lost;
            // Room again: frames that waited for it.
            self.frames();
            self.read_stream();
        }
        self.rewatch(ops);
        if let (Some(was), None) = (input_before, self.input) {
            let _ = ops.remove(Events::empty_raw(was));
        }
        // stdin is watched only while the channel can take what it brings.
        if let Some(input) = self.input
            && self.input_polled
        {
            let r = if self.to_guest.is_empty() {
                ops.modify(Events::new_raw(input, EventSet::IN))
            } else {
                ops.modify(Events::new_raw(input, EventSet::empty()))
            };
            let _ = r;
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Some(input) = self.input {
            // A regular file (or /dev/null) cannot be polled: it is read whenever the channel
            // has room.
            self.input_polled = ops.add(Events::new_raw(input, EventSet::IN)).is_ok();
        }
        self.write_stream();
        self.rewatch(ops);
    }
}
