//! The event loop's own subscribers, each owning its fds: [`StopEvents`] (the exit eventfd,
//! host signals, the `--timeout` timer) and [`ConsoleInput`] (stdin into the UART, with
//! backpressure and the Ctrl-A x escape). Devices bring their own subscribers.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::devices::serial::SerialDevice;
use crate::exit::{ExitReason, ExitSignal};
use crate::signals::SignalFd;
use crate::sync::lock;

/// Ctrl-A, the console escape prefix (as in QEMU): Ctrl-A x stops the VM.
const ESCAPE_PREFIX: u8 = 0x01;

/// Everything that stops the VM from outside the guest, and the eventfd that wakes the loop
/// when the guest or a vCPU stops it.
pub struct StopEvents {
    exit: Arc<ExitSignal>,
    signals: SignalFd,
    /// `--timeout`: fires once, with the limit it was armed with.
    deadline: Option<(TimerFd, Duration)>,
}

impl StopEvents {
    /// Watches `exit`, the host signals in `signals`, and the timer `deadline` if any.
    pub fn new(
        exit: Arc<ExitSignal>,
        signals: SignalFd,
        deadline: Option<(TimerFd, Duration)>,
    ) -> Self {
        Self {
            exit,
            signals,
            deadline,
        }
    }
}

impl MutEventSubscriber for StopEvents {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.exit.eventfd().as_raw_fd() {
            let _ = self.exit.eventfd().read();
        } else if fd == self.signals.as_raw_fd() {
            while let Some(sig) = self.signals.read() {
                self.exit.request(ExitReason::Signal(sig));
            }
        } else if let Some((timer, after)) = &mut self.deadline
            && fd == timer.as_raw_fd()
        {
            let _ = timer.wait();
            self.exit.request(ExitReason::Timeout(*after));
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.exit.eventfd(), EventSet::IN));
        let _ = ops.add(Events::new(&self.signals, EventSet::IN));
        if let Some((timer, _)) = &self.deadline {
            let _ = ops.add(Events::new(timer, EventSet::IN));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InputState {
    /// Reading stdin into the serial FIFO.
    Reading,
    /// The FIFO is full: stdin is off the poll set until the guest drains it.
    Paused,
    /// stdin hit EOF or cannot be polled: no more input, the guest runs on.
    Closed,
}

/// The console escape on a terminal's input: Ctrl-A x stops the VM, Ctrl-A Ctrl-A sends one
/// Ctrl-A (as in QEMU).
#[derive(Debug, Default)]
pub struct Escape {
    enabled: bool,
    armed: bool,
}

impl Escape {
    /// The escape, on (a terminal) or off (every byte goes through).
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            armed: false,
        }
    }

    /// The escape applied to `input`: the bytes for the guest, or `None` if the user asked to
    /// stop.
    pub fn apply(&mut self, input: &[u8]) -> Option<Vec<u8>> {
        let mut forward = Vec::with_capacity(input.len());
        for &b in input {
            if self.enabled && self.armed {
                self.armed = false;
                match b {
                    b'x' | b'X' => return None,
                    // Ctrl-A Ctrl-A sends one Ctrl-A.
                    ESCAPE_PREFIX => forward.push(b),
                    other => {
                        forward.push(ESCAPE_PREFIX);
                        forward.push(other);
                    }
                }
            } else if self.enabled && b == ESCAPE_PREFIX {
                self.armed = true;
            } else {
                forward.push(b);
            }
        }
        Some(forward)
    }
}

/// Console input: host stdin into the UART's receive FIFO, read only while the FIFO has room.
pub struct ConsoleInput {
    exit: Arc<ExitSignal>,
    serial: Arc<Mutex<SerialDevice>>,
    fifo_drained: EventFd,
    input: Option<RawFd>,
    state: InputState,
    escape: Escape,
}

impl ConsoleInput {
    /// Feeds `input` (if any) into `serial`, resuming when `fifo_drained` fires; a terminal
    /// input (`escape_enabled`) also takes the Ctrl-A x escape, which stops through `exit`.
    pub fn new(
        exit: Arc<ExitSignal>,
        serial: Arc<Mutex<SerialDevice>>,
        fifo_drained: EventFd,
        input: Option<RawFd>,
        escape_enabled: bool,
    ) -> Self {
        Self {
            exit,
            serial,
            fifo_drained,
            input,
            state: InputState::Reading,
            escape: Escape::new(escape_enabled),
        }
    }

    fn read_input(&mut self, fd: RawFd, ops: &mut EventOps) {
        let capacity = lock(&self.serial).uart.fifo_capacity();
        if capacity == 0 {
            if ops.remove(Events::empty_raw(fd)).is_ok() {
                self.state = InputState::Paused;
            }
            return;
        }
        let mut buf = [0u8; 64];
        let want = capacity.min(buf.len());
        // SAFETY: reading into a live buffer of at least `want` bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, want) };
        let n = match usize::try_from(n) {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => match std::io::Error::last_os_error().kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => return,
                _ => None,
            },
        };
        let Some(n) = n else {
            // EOF (or a broken stdin): the guest keeps running without input.
            let _ = ops.remove(Events::empty_raw(fd));
            self.state = InputState::Closed;
            return;
        };
        let Some(forward) = self.escape.apply(&buf[..n]) else {
            self.exit.request(ExitReason::Escape);
            return;
        };
        let mut serial = lock(&self.serial);
        if let Err(e) = serial.uart.enqueue_raw_bytes(&forward) {
            log::debug!("serial input: {e:?}");
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.fifo_drained.as_raw_fd() {
            let _ = self.fifo_drained.read();
            if let (InputState::Paused, Some(input)) = (self.state, self.input)
                && ops.add(Events::new_raw(input, EventSet::IN)).is_ok()
            {
                self.state = InputState::Reading;
            }
        } else if Some(fd) == self.input {
            if events.event_set().intersects(EventSet::IN) {
                self.read_input(fd, ops);
            } else if events
                .event_set()
                .intersects(EventSet::HANG_UP | EventSet::ERROR)
            {
                let _ = ops.remove(Events::empty_raw(fd));
                self.state = InputState::Closed;
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.fifo_drained, EventSet::IN));
        if let Some(input) = self.input {
            // A stdin that cannot be polled (/dev/null, a regular file) gives no input.
            if ops.add(Events::new_raw(input, EventSet::IN)).is_err() {
                log::debug!("console input fd {input} cannot be polled; the guest gets no input");
                self.state = InputState::Closed;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::devices::serial::ConsoleOut;

    fn input(escape: bool) -> ConsoleInput {
        let exit = Arc::new(ExitSignal::new(Default::default()).unwrap());
        let out = ConsoleOut::new(
            Box::new(std::io::sink()),
            Default::default(),
            Default::default(),
            exit.clone(),
        );
        let (serial, drained) =
            SerialDevice::new(EventFd::new(EFD_NONBLOCK).unwrap(), out, None).unwrap();
        ConsoleInput::new(exit, Arc::new(Mutex::new(serial)), drained, None, escape)
    }

    #[test]
    fn the_escape() {
        let mut i = input(true).escape;
        assert_eq!(i.apply(b"ab"), Some(b"ab".to_vec()));
        assert_eq!(i.apply(b"\x01\x01"), Some(vec![1]));
        assert_eq!(i.apply(b"\x01q"), Some(vec![1, b'q']));
        // Split across reads.
        assert_eq!(i.apply(b"z\x01"), Some(b"z".to_vec()));
        assert_eq!(i.apply(b"x"), None);
        // Not a terminal: every byte goes through.
        let mut i = input(false).escape;
        assert_eq!(i.apply(b"\x01x"), Some(b"\x01x".to_vec()));
    }
}
