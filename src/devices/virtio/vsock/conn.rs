//! One vsock stream between a guest socket and a host Unix socket: its state, its credit in
//! both directions (virtio 1.2, 5.10.6.3), and the guest's bytes the host side has not taken
//! yet.

use std::collections::VecDeque;
use std::io::Write;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

/// What each side may still receive before the other waits: ember's buffer for one stream.
pub const CONN_BUF_ALLOC: u32 = 256 << 10;

/// Where a stream is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A host process asked for it: REQUEST sent, RESPONSE awaited.
    Connecting,
    /// Both sides may send.
    Established,
}

/// A stream and its bookkeeping.
pub struct Conn {
    /// The host side.
    pub stream: UnixStream,
    /// The port on the host side (CID 2).
    pub host_port: u32,
    /// The port on the guest side.
    pub guest_port: u32,
    /// The state.
    pub state: State,
    /// A host process connected through the listener: it gets `OK <port>\n` once the guest
    /// accepts.
    pub host_initiated: bool,
    /// The guest's receive buffer and how much of what ember sent it has consumed.
    pub peer_buf_alloc: u32,
    /// See `peer_buf_alloc`.
    pub peer_fwd_cnt: Wrapping<u32>,
    /// Bytes ember has sent to the guest.
    pub rx_cnt: Wrapping<u32>,
    /// Bytes of the guest's ember has handed to the host side.
    pub fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as the guest last heard it.
    pub fwd_cnt_sent: Wrapping<u32>,
    /// Guest bytes the host side could not take yet (at most `CONN_BUF_ALLOC`, which the
    /// guest's credit keeps it to).
    pub pending_to_host: VecDeque<u8>,
    /// How many bytes at the front of `pending_to_host` are ember's own (the `OK` line), not
    /// the guest's: they must not count in `fwd_cnt`, or the guest's credit arithmetic breaks.
    own_pending: usize,
    /// Host bytes read but not yet in a guest buffer.
    pub pending_to_guest: Vec<u8>,
    /// The host side has more to read (as far as ember knows).
    pub host_readable: bool,
    /// The host side closed its end.
    pub host_eof: bool,
    /// The guest has been told the host side closed.
    pub eof_told: bool,
    /// The guest will send no more: shut the host side's write end once it has everything.
    pub guest_done_sending: bool,
    /// Whether the event loop watches the host side for reading and for writing.
    pub watch_in: bool,
    /// See `watch_in`.
    pub watch_out: bool,
}

impl Conn {
    /// A stream in `state` on `stream`.
    pub fn new(
        stream: UnixStream,
        host_port: u32,
        guest_port: u32,
        state: State,
        host_initiated: bool,
    ) -> Self {
        Self {
            stream,
            host_port,
            guest_port,
            state,
            host_initiated,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            pending_to_host: VecDeque::new(),
            own_pending: 0,
            pending_to_guest: Vec::new(),
            host_readable: false,
            host_eof: false,
            eof_told: false,
            guest_done_sending: false,
            watch_in: false,
            watch_out: false,
        }
    }

    /// Bytes the guest can still take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Takes the credit fields of a packet from the guest.
    pub fn update_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// Whether the guest should hear of `fwd_cnt` now: when it has gone a quarter of the
    /// buffer since the guest last heard, so a sender never stalls on stale credit.
    pub fn credit_update_due(&self) -> bool {
        (self.fwd_cnt - self.fwd_cnt_sent).0 >= CONN_BUF_ALLOC / 4
    }

    /// Hands guest bytes to the host side: what the socket takes now, the rest queued.
    /// Returns false if the guest sent more than its credit allowed, or the host side broke.
    pub fn send_to_host(&mut self, data: &[u8]) -> bool {
        if self.pending_to_host.len() + data.len() > CONN_BUF_ALLOC as usize {
            return false;
        }
        if !self.pending_to_host.is_empty() {
            self.pending_to_host.extend(data);
            return true;
        }
        let written = match self.stream.write(data) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(_) => return false,
        };
        self.fwd_cnt += Wrapping(written as u32);
        self.pending_to_host.extend(&data[written..]);
        true
    }

    /// Hands ember's own bytes (the `OK <port>` line of Firecracker's protocol) to the host
    /// side, ahead of any guest bytes and without counting them as forwarded: the guest sent
    /// none of them, and a `fwd_cnt` above what it sent makes a Linux guest see no credit.
    pub fn send_own_to_host(&mut self, line: &[u8]) -> bool {
        if self.pending_to_host.len() > self.own_pending {
            // Guest bytes already wait: the line would land behind them. Never happens in
            // the protocol (the line is the stream's first byte), so it is a broken stream.
            return false;
        }
        let counted = self.fwd_cnt;
        let queued = self.pending_to_host.len();
        let ok = self.send_to_host(line);
        self.fwd_cnt = counted;
        self.own_pending += self.pending_to_host.len() - queued;
        ok
    }

    /// Writes what is queued for the host side; false if it broke.
    pub fn flush_to_host(&mut self) -> bool {
        while !self.pending_to_host.is_empty() {
            let (front, _) = self.pending_to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => return false,
                Ok(n) => {
                    self.pending_to_host.drain(..n);
                    let own = n.min(self.own_pending);
                    self.own_pending -= own;
                    self.fwd_cnt += Wrapping((n - own) as u32);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return true,
                Err(_) => return false,
            }
        }
        if self.guest_done_sending {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_arithmetic_wraps() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(a, 1, 2, State::Established, false);
        assert_eq!(c.peer_credit(), 0);
        c.update_credit(1000, u32::MAX - 10);
        c.rx_cnt = Wrapping(u32::MAX - 10);
        assert_eq!(c.peer_credit(), 1000);
        c.rx_cnt += Wrapping(600);
        assert_eq!(c.peer_credit(), 400);
        c.rx_cnt += Wrapping(600);
        assert_eq!(
            c.peer_credit(),
            0,
            "a guest that overdrew gets nothing, not a wrap"
        );
    }

    #[test]
    fn embers_own_line_is_not_counted_as_the_guests() {
        use std::io::{Read, Write};
        let (a, _b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Conn::new(a, 1, 2, State::Connecting, true);
        assert!(c.send_own_to_host(b"OK 1073741824\n"));
        assert!(c.send_to_host(b"hi"));
        assert_eq!(c.fwd_cnt, Wrapping(2), "only the guest's two bytes");
        // The same when the line has to wait behind a full socket.
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let mut filler = a.try_clone().unwrap();
        while filler.write(&[0u8; 4096]).is_ok() {}
        let mut c = Conn::new(a, 1, 2, State::Connecting, true);
        assert!(c.send_own_to_host(b"OK 7\n"));
        assert!(c.send_to_host(b"hi"));
        assert_eq!(c.pending_to_host.len(), 7);
        let mut sink = vec![0u8; 1 << 20];
        while b.read(&mut sink).is_ok() {}
        assert!(c.flush_to_host());
        assert!(c.pending_to_host.is_empty());
        assert_eq!(c.fwd_cnt, Wrapping(2));
        // Only ever first: after guest bytes it would be miscounted, so it is refused.
        c.pending_to_host.extend(b"guest");
        assert!(!c.send_own_to_host(b"OK 8\n"));
    }

    #[test]
    fn bytes_to_the_host_side_are_bounded_and_counted() {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Conn::new(a, 1, 2, State::Established, false);
        assert!(c.send_to_host(b"hello"));
        assert_eq!(c.fwd_cnt, Wrapping(5));
        // Fill the socket, then more than the credit allows is refused.
        let big = vec![7u8; CONN_BUF_ALLOC as usize];
        while c.pending_to_host.is_empty() {
            assert!(c.send_to_host(&big[..4096]));
        }
        assert!(!c.send_to_host(&big));
        drop(b);
        assert!(!c.flush_to_host(), "a closed host side is a broken stream");
    }
}
