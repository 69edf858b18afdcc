//! virtio-vsock with Firecracker's host side, so tools written for Firecracker's vsock work
//! unchanged:
//! - a host process connects to the Unix socket at `uds_path` and writes `CONNECT <port>\n`;
//!   ember opens a stream to the guest's port and, once the guest accepts, answers
//!   `OK <host port>\n`; from then on the socket carries the stream;
//! - a guest connection to the host (CID 2), port P, reaches the host process listening on the
//!   Unix socket `<uds_path>_P`.
//!
//! Packets are parsed and built with virtio-vsock. Everything is bounded: streams (64), host
//! connections still sending their CONNECT line (16), control packets waiting for guest
//! buffers (512; past that ember stops taking the guest's packets until the guest takes its),
//! and the bytes of one stream in flight either way (its credit, 256 KiB). A guest that breaks
//! the protocol gets its stream reset.

pub mod conn;

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use event_manager::{EventOps, Events};
use virtio_queue::{Queue, QueueT};
use virtio_vsock::packet::{PKT_HEADER_SIZE, VsockPacket};
use vm_memory::Bytes;
use vmm_sys_util::epoll::EventSet;

use super::{Active, Served, VirtioDevice, pop_chain, read_config_bytes};
use conn::{CONN_BUF_ALLOC, Conn, State};

/// virtio_ids: socket device.
const DEVICE_TYPE: u32 = 19;
const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;
/// The event a restored device sends: every stream the guest had is gone (virtio 1.2,
/// 5.10.6.6), and it reads the guest CID again.
const EVENT_TRANSPORT_RESET: u32 = 0;
const QUEUE_SIZE: u16 = 256;
/// The host's context id.
const HOST_CID: u64 = 2;
const TYPE_STREAM: u16 = 1;
/// Packet operations (virtio 1.2, 5.10.6).
pub const OP_REQUEST: u16 = 1;
/// The answer to a REQUEST.
pub const OP_RESPONSE: u16 = 2;
/// Reset the stream.
pub const OP_RST: u16 = 3;
/// One side will send or receive no more.
pub const OP_SHUTDOWN: u16 = 4;
/// Data.
pub const OP_RW: u16 = 5;
/// Credit news.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Asks for credit news.
pub const OP_CREDIT_REQUEST: u16 = 7;
const SHUTDOWN_RCV: u32 = 1;
const SHUTDOWN_SEND: u32 = 2;
/// The largest payload of one packet.
const MAX_PKT_DATA: u32 = 64 << 10;
const MAX_CONNS: usize = 64;
const MAX_PENDING_HOST: usize = 16;
const MAX_CONTROL: usize = 512;
/// The longest `CONNECT <port>\n` line.
const MAX_LINE: usize = 32;
/// Host ports for host-initiated streams start here (well clear of the ports guests listen on).
const FIRST_HOST_PORT: u32 = 1 << 30;

/// Errors setting the device up.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen at {path} ({source}): pick a path in a writable folder")]
pub struct VsockError {
    path: String,
    source: std::io::Error,
}

/// A packet with no payload waiting for a guest receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Control {
    host_port: u32,
    guest_port: u32,
    op: u16,
    flags: u32,
}

/// A host connection that has not yet said which guest port it wants.
struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The vsock device.
pub struct Vsock {
    cid: u64,
    uds_path: Option<PathBuf>,
    listener: Option<UnixListener>,
    /// ember's own channel: the guest's connection to this host port gets this stream (once).
    channel: Option<(u32, UnixStream)>,
    pending: Vec<PendingHost>,
    /// Streams by (host port, guest port).
    conns: HashMap<(u32, u32), Conn>,
    control: VecDeque<Control>,
    next_host_port: u32,
    /// The guest had no receive buffer last time: wait for its RX notification.
    rx_starved: bool,
    buf: Vec<u8>,
    active: Option<Active>,
    /// Host streams a guest reset let go, closed on the event loop's thread.
    retired: Vec<UnixStream>,
    /// Restored from a snapshot: the guest's streams did not come along, and the next buffer
    /// on its event queue tells it so.
    transport_reset_due: bool,
    /// Whether ember's channel was given (it is taken once the guest connects).
    carries_channel: bool,
}

impl Vsock {
    /// A device for guest `cid`, listening for host connections at `uds_path` if given
    /// (Firecracker's convention), and handing the guest's connection to host port
    /// `channel.0` to the stream `channel.1` (ember's channel to a `process`'s init).
    pub fn new(
        cid: u64,
        uds_path: Option<&Path>,
        channel: Option<(u32, UnixStream)>,
    ) -> Result<Self, VsockError> {
        let listener = match uds_path {
            Some(p) => {
                let err = |source| VsockError {
                    path: p.display().to_string(),
                    source,
                };
                let l = UnixListener::bind(p).map_err(err)?;
                l.set_nonblocking(true).map_err(err)?;
                Some(l)
            }
            None => None,
        };
        if let Some((_, stream)) = &channel {
            stream.set_nonblocking(true).map_err(|source| VsockError {
                path: "ember's channel".into(),
                source,
            })?;
        }
        let carries_channel = channel.is_some();
        Ok(Self {
            cid,
            uds_path: uds_path.map(Path::to_path_buf),
            listener,
            channel,
            pending: Vec::new(),
            conns: HashMap::new(),
            control: VecDeque::new(),
            next_host_port: FIRST_HOST_PORT,
            rx_starved: false,
            buf: vec![0; MAX_PKT_DATA as usize],
            active: None,
            retired: Vec::new(),
            transport_reset_due: false,
            carries_channel,
        })
    }

    fn queue_control(&mut self, host_port: u32, guest_port: u32, op: u16, flags: u32) {
        self.control.push_back(Control {
            host_port,
            guest_port,
            op,
            flags,
        });
    }

    /// Drops a stream, telling the guest with a reset unless `quietly`.
    fn drop_conn(&mut self, key: (u32, u32), quietly: bool, ops: &mut EventOps) {
        if let Some(c) = self.conns.remove(&key) {
            if c.watch_in || c.watch_out {
                let _ = ops.remove(Events::empty_raw(c.stream.as_raw_fd()));
            }
            if !quietly {
                self.queue_control(key.0, key.1, OP_RST, 0);
            }
        }
    }

    /// Sets what the event loop watches a stream's host side for.
    fn watch(c: &mut Conn, read: bool, write: bool, ops: &mut EventOps) {
        if (c.watch_in, c.watch_out) == (read, write) {
            return;
        }
        let fd = c.stream.as_raw_fd();
        let mut set = EventSet::empty();
        if read {
            set |= EventSet::IN;
        }
        if write {
            set |= EventSet::OUT;
        }
        let was = c.watch_in || c.watch_out;
        let r = match (was, read || write) {
            (false, true) => ops.add(Events::new_raw(fd, set)),
            (true, true) => ops.modify(Events::new_raw(fd, set)),
            (true, false) => ops.remove(Events::empty_raw(fd)),
            (false, false) => Ok(()),
        };
        if r.is_ok() {
            c.watch_in = read;
            c.watch_out = write;
        }
    }

    /// Re-evaluates what to watch each stream for: reading only when the guest can take more
    /// (credit, and buffers), writing only while bytes wait for the host side.
    fn rewatch(&mut self, ops: &mut EventOps) {
        let starved = self.rx_starved;
        for c in self.conns.values_mut() {
            let read = c.state == State::Established
                && !c.host_eof
                && c.pending_to_guest.is_empty()
                && c.peer_credit() > 0
                && !starved;
            let write = !c.pending_to_host.is_empty();
            Self::watch(c, read, write, ops);
        }
    }

    // ---- host side -------------------------------------------------------------------

    fn accept(&mut self, ops: &mut EventOps) {
        let Some(listener) = &self.listener else {
            return;
        };
        let listener = listener.as_raw_fd();
        loop {
            // SAFETY: accept4 on a listening socket we own; null address arguments are allowed.
            let fd = unsafe {
                libc::accept4(
                    listener,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                return;
            }
            // SAFETY: accept4 returned a fresh fd that nothing else owns.
            let stream = unsafe { UnixStream::from_raw_fd(fd) };
            if self.pending.len() >= MAX_PENDING_HOST || self.active.is_none() {
                continue; // dropped: closed at once
            }
            if ops
                .add(Events::new_raw(stream.as_raw_fd(), EventSet::IN))
                .is_ok()
            {
                self.pending.push(PendingHost {
                    stream,
                    line: Vec::new(),
                });
            }
        }
    }

    /// Reads a pending host connection's `CONNECT <port>\n` line; once whole, opens the
    /// stream to the guest.
    fn read_connect_line(&mut self, i: usize, ops: &mut EventOps) {
        let mut byte = [0u8; MAX_LINE];
        let p = &mut self.pending[i];
        let room = MAX_LINE - p.line.len();
        let n = match p.stream.read(&mut byte[..room]) {
            Ok(0) => 0,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => 0,
        };
        if n == 0 {
            let p = self.pending.swap_remove(i);
            let _ = ops.remove(Events::empty_raw(p.stream.as_raw_fd()));
            return;
        }
        p.line.extend_from_slice(&byte[..n]);
        let Some(end) = p.line.iter().position(|&b| b == b'\n') else {
            if p.line.len() >= MAX_LINE {
                let p = self.pending.swap_remove(i);
                let _ = ops.remove(Events::empty_raw(p.stream.as_raw_fd()));
            }
            return;
        };
        let p = self.pending.swap_remove(i);
        let _ = ops.remove(Events::empty_raw(p.stream.as_raw_fd()));
        let port = std::str::from_utf8(&p.line[..end])
            .ok()
            .and_then(|l| l.trim().strip_prefix("CONNECT "))
            .and_then(|n| n.trim().parse::<u32>().ok());
        let Some(guest_port) = port else {
            return; // not the protocol: closed
        };
        if self.conns.len() >= MAX_CONNS {
            return;
        }
        let host_port = self.next_host_port;
        self.next_host_port = self.next_host_port.wrapping_add(1).max(FIRST_HOST_PORT);
        let mut c = Conn::new(p.stream, host_port, guest_port, State::Connecting, true);
        // Bytes the host sends before the guest accepts wait in the socket.
        c.host_readable = true;
        self.conns.insert((host_port, guest_port), c);
        self.queue_control(host_port, guest_port, OP_REQUEST, 0);
    }

    /// Reads what a stream's host side has for the guest, as far as the guest's credit goes.
    fn fill_from_host(c: &mut Conn) {
        if !c.pending_to_guest.is_empty() || c.host_eof || c.state != State::Established {
            return;
        }
        let want = c.peer_credit().min(MAX_PKT_DATA) as usize;
        if want == 0 {
            return;
        }
        c.pending_to_guest.resize(want, 0);
        match c.stream.read(&mut c.pending_to_guest) {
            Ok(0) => {
                c.pending_to_guest.clear();
                c.host_eof = true;
            }
            Ok(n) => c.pending_to_guest.truncate(n),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                c.pending_to_guest.clear();
                c.host_readable = false;
            }
            Err(_) => {
                c.pending_to_guest.clear();
                c.host_eof = true;
            }
        }
    }

    // ---- guest event queue ------------------------------------------------------------

    /// Sends the transport reset a restore owes the guest, once it has given a buffer for it.
    fn send_events(&mut self) -> Served {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        if !self.transport_reset_due {
            return Ok(());
        }
        let Active { mem, queues, .. } = active;
        let Some(queue) = queues.get_mut(EVQ) else {
            return Ok(());
        };
        let Some(chain) = pop_chain(queue, mem, EVQ)? else {
            return Ok(()); // sent when the guest gives a buffer
        };
        let head = chain.head_index();
        let mut written = 0;
        for desc in chain {
            if desc.is_write_only() && desc.len() >= 4 {
                if mem
                    .write_obj(EVENT_TRANSPORT_RESET.to_le(), desc.addr())
                    .is_ok()
                {
                    written = 4;
                }
                break;
            }
        }
        if written == 0 {
            crate::guest_log!(
                active.log,
                log::Level::Debug,
                "an event buffer too small for the transport reset"
            );
        }
        let _ = queue.add_used(&*mem, head, written);
        self.transport_reset_due = written == 0;
        active.notify(EVQ);
        Ok(())
    }

    // ---- guest receive queue ----------------------------------------------------------

    /// Fills the guest's receive buffers: control packets first, then data, stream by stream.
    fn deliver(&mut self, ops: &mut EventOps) -> Served {
        let Some(mut active) = self.active.take() else {
            return Ok(());
        };
        let log = active.log.clone();
        let mut result = Ok(());
        let mut delivered = false;
        self.rx_starved = false;
        // Each stream is visited once per round, so one busy stream cannot starve the others.
        let keys: Vec<(u32, u32)> = self.conns.keys().copied().collect();
        let mut data_turns = keys.into_iter();
        loop {
            // What goes next: a control packet, or a stream's data (or its end).
            let from_control = !self.control.is_empty();
            let next = if let Some(c) = self.control.front() {
                Some(*c)
            } else {
                loop {
                    let Some(key) = data_turns.next() else {
                        break None;
                    };
                    let Some(c) = self.conns.get_mut(&key) else {
                        continue;
                    };
                    if c.host_readable || c.watch_in {
                        Self::fill_from_host(c);
                    }
                    if !c.pending_to_guest.is_empty() {
                        break Some(Control {
                            host_port: key.0,
                            guest_port: key.1,
                            op: OP_RW,
                            flags: 0,
                        });
                    }
                    if c.host_eof && !c.eof_told && c.state == State::Established {
                        // The host side will send no more: tell the guest, once. It may
                        // still send (a half-close); the stream ends when it closes too.
                        c.eof_told = true;
                        break Some(Control {
                            host_port: key.0,
                            guest_port: key.1,
                            op: OP_SHUTDOWN,
                            flags: SHUTDOWN_SEND,
                        });
                    }
                }
            };
            let Some(pkt) = next else { break };
            let Active { mem, queues, .. } = &mut active;
            let Some(queue) = queues.get_mut(RXQ) else {
                break;
            };
            let mut chain = match pop_chain(queue, mem, RXQ) {
                Ok(Some(chain)) => chain,
                Ok(None) => {
                    self.rx_starved = true;
                    break;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            if from_control {
                self.control.pop_front();
            }
            crate::guest_log!(
                log,
                log::Level::Debug,
                "to the guest op {} flags {:#x} host port {} guest port {}",
                pkt.op,
                pkt.flags,
                pkt.host_port,
                pkt.guest_port
            );
            let head = chain.head_index();
            let used = match VsockPacket::from_rx_virtq_chain(&*mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut p) => self.write_packet(&mut p, pkt),
                Err(e) => {
                    crate::guest_log!(log, log::Level::Debug, "unusable receive buffer: {e}");
                    0
                }
            };
            if queue.add_used(&*mem, head, used).is_err() {
                break;
            }
            delivered = true;
        }
        if delivered {
            active.notify(RXQ);
        }
        self.active = Some(active);
        self.rewatch(ops);
        result
    }

    /// Fills a receive packet; returns the bytes written (header and data).
    fn write_packet<B: vm_memory::bitmap::BitmapSlice>(
        &mut self,
        p: &mut VsockPacket<'_, B>,
        pkt: Control,
    ) -> u32 {
        let key = (pkt.host_port, pkt.guest_port);
        let fwd_cnt = self.conns.get(&key).map(|c| c.fwd_cnt.0).unwrap_or(0);
        p.set_src_cid(HOST_CID)
            .set_dst_cid(self.cid)
            .set_src_port(pkt.host_port)
            .set_dst_port(pkt.guest_port)
            .set_type(TYPE_STREAM)
            .set_op(pkt.op)
            .set_flags(pkt.flags)
            .set_buf_alloc(CONN_BUF_ALLOC)
            .set_fwd_cnt(fwd_cnt)
            .set_len(0);
        if let Some(c) = self.conns.get_mut(&key) {
            c.fwd_cnt_sent = c.fwd_cnt;
        }
        if pkt.op != OP_RW {
            return PKT_HEADER_SIZE as u32;
        }
        let (Some(c), Some(slice)) = (self.conns.get_mut(&key), p.data_slice()) else {
            return PKT_HEADER_SIZE as u32;
        };
        let n = c.pending_to_guest.len().min(slice.len());
        if slice.write_slice(&c.pending_to_guest[..n], 0).is_err() {
            return PKT_HEADER_SIZE as u32;
        }
        c.pending_to_guest.drain(..n);
        c.rx_cnt += Wrapping(n as u32);
        p.set_len(n as u32);
        (PKT_HEADER_SIZE + n) as u32
    }

    // ---- guest transmit queue ---------------------------------------------------------

    /// Takes the guest's packets, until ember's own replies would pile up.
    fn take_from_guest(&mut self, ops: &mut EventOps) -> Served {
        let Some(mut active) = self.active.take() else {
            return Ok(());
        };
        let mut taken = false;
        let mut result = Ok(());
        while self.control.len() < MAX_CONTROL {
            let Active {
                mem, queues, log, ..
            } = &mut active;
            let Some(queue) = queues.get_mut(TXQ) else {
                break;
            };
            let mut chain = match pop_chain(queue, mem, TXQ) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let head = chain.head_index();
            match VsockPacket::from_tx_virtq_chain(&*mem, &mut chain, MAX_PKT_DATA) {
                Ok(p) => self.handle_guest_packet(&p, log, ops),
                Err(e) => {
                    crate::guest_log!(
                        log,
                        log::Level::Debug,
                        "unusable packet from the guest: {e}"
                    )
                }
            }
            if queue.add_used(&*mem, head, 0).is_err() {
                break;
            }
            taken = true;
        }
        if taken {
            active.notify(TXQ);
        }
        self.active = Some(active);
        result
    }

    fn handle_guest_packet<B: vm_memory::bitmap::BitmapSlice>(
        &mut self,
        p: &VsockPacket<'_, B>,
        log: &crate::guest_log::LogLimit,
        ops: &mut EventOps,
    ) {
        let key = (p.dst_port(), p.src_port());
        crate::guest_log!(
            log,
            log::Level::Debug,
            "guest op {} flags {:#x} len {} host port {} guest port {}",
            p.op(),
            p.flags(),
            p.len(),
            key.0,
            key.1
        );
        if p.src_cid() != self.cid || p.dst_cid() != HOST_CID || p.type_() != TYPE_STREAM {
            if p.op() != OP_RST {
                self.queue_control(key.0, key.1, OP_RST, 0);
            }
            return;
        }
        if let Some(c) = self.conns.get_mut(&key) {
            c.update_credit(p.buf_alloc(), p.fwd_cnt());
        }
        match p.op() {
            OP_REQUEST => self.guest_connect(key, p.buf_alloc(), p.fwd_cnt(), ops),
            OP_RESPONSE => {
                let ok = match self.conns.get_mut(&key) {
                    Some(c) if c.state == State::Connecting && c.host_initiated => {
                        c.state = State::Established;
                        c.send_own_to_host(format!("OK {}\n", c.host_port).as_bytes())
                    }
                    _ => false,
                };
                if !ok {
                    self.drop_conn(key, false, ops);
                    if !self.conns.contains_key(&key) {
                        self.queue_control(key.0, key.1, OP_RST, 0);
                    }
                }
            }
            OP_RW => {
                let len = p.len() as usize;
                let ok = match (self.conns.get_mut(&key), p.data_slice()) {
                    (Some(c), Some(slice)) if c.state == State::Established => {
                        let n = len.min(slice.len()).min(self.buf.len());
                        slice.read_slice(&mut self.buf[..n], 0).is_ok()
                            && c.send_to_host(&self.buf[..n])
                    }
                    (Some(c), None) if c.state == State::Established => true,
                    _ => false,
                };
                if !ok {
                    self.drop_conn(key, false, ops);
                } else if let Some(c) = self.conns.get(&key)
                    && c.credit_update_due()
                {
                    self.queue_control(key.0, key.1, OP_CREDIT_UPDATE, 0);
                }
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.queue_control(key.0, key.1, OP_CREDIT_UPDATE, 0);
                }
            }
            OP_SHUTDOWN => {
                let flags = p.flags();
                if flags & (SHUTDOWN_RCV | SHUTDOWN_SEND) == SHUTDOWN_RCV | SHUTDOWN_SEND {
                    // Both directions done: flush what is queued, then reset.
                    if let Some(c) = self.conns.get_mut(&key) {
                        let _ = c.flush_to_host();
                    }
                    self.drop_conn(key, false, ops);
                } else if let Some(c) = self.conns.get_mut(&key) {
                    if flags & SHUTDOWN_SEND != 0 {
                        c.guest_done_sending = true;
                        let _ = c.flush_to_host();
                    }
                    if flags & SHUTDOWN_RCV != 0 {
                        c.host_eof = true;
                    }
                }
            }
            OP_RST => self.drop_conn(key, true, ops),
            _ => self.drop_conn(key, false, ops),
        }
    }

    /// The guest connects to host port `key.0`: ember's channel, or `<uds_path>_<port>`.
    fn guest_connect(&mut self, key: (u32, u32), buf_alloc: u32, fwd_cnt: u32, ops: &mut EventOps) {
        if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNS {
            self.queue_control(key.0, key.1, OP_RST, 0);
            return;
        }
        let stream = match (&self.channel, &self.uds_path) {
            (Some((port, _)), _) if *port == key.0 => self.channel.take().map(|(_, s)| s),
            (_, Some(uds)) => {
                let mut path = uds.clone().into_os_string();
                path.push(format!("_{}", key.0));
                connect_unix(Path::new(&path))
            }
            (_, None) => None,
        };
        match stream {
            Some(stream) => {
                let mut c = Conn::new(stream, key.0, key.1, State::Established, false);
                c.update_credit(buf_alloc, fwd_cnt);
                c.host_readable = true;
                self.conns.insert(key, c);
                self.queue_control(key.0, key.1, OP_RESPONSE, 0);
                self.rewatch(ops);
            }
            None => self.queue_control(key.0, key.1, OP_RST, 0),
        }
    }

    fn conn_by_fd(&self, fd: RawFd) -> Option<(u32, u32)> {
        self.conns
            .iter()
            .find(|(_, c)| c.stream.as_raw_fd() == fd)
            .map(|(k, _)| *k)
    }
}

/// Connects a non-blocking Unix stream to `path`, without an fcntl (the VMM thread's filter
/// allows socket() for Unix sockets and connect()).
fn connect_unix(path: &Path) -> Option<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return None;
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket creation.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: socket returned a fresh fd that nothing else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: `addr` is a live sockaddr_un of the size given.
    let rc = unsafe {
        libc::connect(
            fd,
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    (rc == 0).then_some(stream)
}

impl Drop for Vsock {
    fn drop(&mut self) {
        // The socket file is ember's: leave nothing behind for the next run to trip on.
        if let Some(p) = &self.uds_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn active_queues(&self) -> Option<&[Queue]> {
        self.active.as_ref().map(|a| a.queues.as_slice())
    }

    fn activate(&mut self, active: Active) {
        self.active = Some(active);
    }

    fn reset(&mut self) {
        // The guest's streams are gone with its driver; the host sides are closed by
        // `retire`, on the event loop's thread.
        self.active = None;
        self.retired
            .extend(self.conns.drain().map(|(_, c)| c.stream));
        self.retired
            .extend(self.pending.drain(..).map(|p| p.stream));
        self.control.clear();
    }

    fn retire(&mut self, ops: &mut EventOps) {
        for stream in self.retired.drain(..) {
            // Already forgotten by the loop if it reported the stream meanwhile.
            let _ = ops.remove(Events::empty(&stream));
        }
    }

    fn snapshot_refusal(&self) -> Option<String> {
        self.carries_channel.then(|| {
            "ember's channel to a program's init rides on vsock, and a snapshot cannot hold its session yet".into()
        })
    }

    fn save_note(&self) -> Option<String> {
        let open = self.conns.len() + self.pending.len();
        (open > 0).then(|| {
            format!("vsock: {open} open connection(s) are not in the snapshot: a restored guest is told its streams were reset, and their host peers are not reconnected")
        })
    }

    fn restored(&mut self) {
        self.transport_reset_due = true;
    }

    fn host_fds(&self) -> Vec<RawFd> {
        self.listener.iter().map(|l| l.as_raw_fd()).collect()
    }

    fn queue_event(&mut self, queue: usize, ops: &mut EventOps) -> Served {
        match queue {
            RXQ => self.rx_starved = false,
            TXQ => self.take_from_guest(ops)?,
            _ => self.send_events()?,
        }
        self.deliver(ops)?;
        // Replies to the guest may have made room for more of its packets.
        if queue == RXQ {
            self.take_from_guest(ops)?;
            self.deliver(ops)?;
        }
        Ok(())
    }

    fn host_event(&mut self, events: Events, ops: &mut EventOps) -> Served {
        let fd = events.fd();
        if self.listener.as_ref().is_some_and(|l| l.as_raw_fd() == fd) {
            self.accept(ops);
            return Ok(());
        }
        if let Some(i) = self.pending.iter().position(|p| p.stream.as_raw_fd() == fd) {
            self.read_connect_line(i, ops);
        } else if let Some(key) = self.conn_by_fd(fd) {
            let set = events.event_set();
            let mut broken = false;
            if let Some(c) = self.conns.get_mut(&key) {
                if set.intersects(EventSet::OUT) {
                    broken = !c.flush_to_host();
                }
                if set.intersects(EventSet::IN | EventSet::HANG_UP) {
                    c.host_readable = true;
                }
            }
            if broken {
                self.drop_conn(key, false, ops);
            }
        } else {
            // Not ours any more (a stream just dropped): make sure the loop forgets it.
            let _ = ops.remove(Events::empty_raw(fd));
            return Ok(());
        }
        self.deliver(ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_is_made_and_removed() {
        let p = std::env::temp_dir().join(format!("ember-vsock-{}", std::process::id()));
        let v = Vsock::new(3, Some(&p), None).unwrap();
        assert!(p.exists());
        let mut d = [0u8; 8];
        v.read_config(0, &mut d);
        assert_eq!(u64::from_le_bytes(d), 3);
        // A second device cannot take the same path.
        assert!(Vsock::new(4, Some(&p), None).is_err());
        drop(v);
        assert!(!p.exists());
    }

    #[test]
    fn connect_unix_reaches_a_listener_or_says_no() {
        let p = std::env::temp_dir().join(format!("ember-vsock-c-{}", std::process::id()));
        assert!(connect_unix(&p).is_none());
        let l = UnixListener::bind(&p).unwrap();
        assert!(connect_unix(&p).is_some());
        drop(l);
        std::fs::remove_file(&p).unwrap();
        assert!(connect_unix(Path::new(&"x".repeat(200))).is_none());
    }
}
