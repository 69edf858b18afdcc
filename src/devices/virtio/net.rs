//! virtio-net: an Ethernet interface backed by a host TAP device that the user created (`ip
//! tuntap add NAME mode tap`). No offloads: each frame crosses whole, with a zeroed virtio-net
//! header in front on its way into the guest and its header dropped on its way out. Frames go
//! through one bounded buffer each way; when the guest has no receive buffer, ember stops
//! reading the TAP (the kernel queues, then drops) instead of queueing in its own memory.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use event_manager::{EventOps, Events};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::{Active, Served, VirtioDevice, pop_chain, read_config_bytes};

/// virtio_ids: network device.
const DEVICE_TYPE: u32 = 1;
/// Feature bit: the device has a MAC address in its configuration space.
const F_MAC: u64 = 1 << 5;
/// The virtio-net header of a modern device (with `num_buffers`), in front of every frame.
const HDR_LEN: usize = 12;
/// The largest frame ember moves: a 64 KiB packet and its Ethernet header, plus the virtio
/// header.
const FRAME_MAX: usize = 65_562;
const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZE: u16 = 256;

/// `ioctl(TUNSETIFF)`: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;

/// Errors attaching to a TAP device.
#[derive(Debug, thiserror::Error)]
#[error("TAP {name}: {reason}")]
pub struct NetError {
    name: String,
    reason: String,
}

/// An open TAP device.
pub struct Tap {
    file: File,
}

impl Tap {
    /// Attaches to the existing TAP device `name` (non-blocking).
    pub fn open(name: &str) -> Result<Self, NetError> {
        let err = |reason: String| NetError {
            name: name.to_string(),
            reason,
        };
        let sys = std::path::Path::new("/sys/class/net").join(name);
        if name.len() >= 16 || name.contains('/') || !sys.exists() {
            return Err(err(format!(
                "no such network device: create it first (ip tuntap add {name} mode tap)"
            )));
        }
        let Ok(flags) = std::fs::read_to_string(sys.join("tun_flags")) else {
            return Err(err(
                "not a TAP device: pass one made with ip tuntap add NAME mode tap".into(),
            ));
        };
        // A TUN device carries IP packets, not Ethernet frames: the kernel refuses to attach
        // to it as a TAP (EINVAL), which says nothing useful.
        let flags = i16::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap_or(0);
        if flags & IFF_TAP == 0 {
            return Err(err(format!(
                "a TUN device (IP packets), not a TAP (Ethernet frames): create a TAP with ip tuntap add {name} mode tap"
            )));
        }
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| {
                err(format!(
                    "cannot open /dev/net/tun ({e}): load the tun module"
                ))
            })?;
        // struct ifreq: the name (16 bytes, NUL-padded), then the flags.
        let mut ifreq = [0u8; 40];
        ifreq[..name.len()].copy_from_slice(name.as_bytes());
        ifreq[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq, for which the buffer is big enough.
        let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, ifreq.as_mut_ptr()) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            return Err(err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => format!(
                    "no permission to attach to it ({e}): run as root, or create it with ip tuntap add {name} mode tap user $USER"
                ),
                Some(libc::EBUSY) => {
                    format!("busy ({e}): another process (another VM?) is attached to it")
                }
                _ => format!("cannot attach to it ({e})"),
            }));
        }
        Ok(Self { file: tun })
    }
}

/// A MAC address for a TAP that was given none: locally administered, from the TAP's name.
pub fn default_mac(tap: &str) -> [u8; 6] {
    // FNV-1a: stable across runs, so a guest keeps its address.
    let mut h: u32 = 0x811c_9dc5;
    for b in tap.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let b = h.to_be_bytes();
    [0x02, 0xe7, b[0], b[1], b[2], b[3]]
}

/// A virtio network device.
pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    active: Option<Active>,
    frame: Vec<u8>,
    /// A frame read from the TAP that no receive buffer has taken yet (its length, header
    /// included, in `frame`).
    pending: Option<usize>,
    /// Whether the event loop watches the TAP.
    listening: bool,
}

impl Net {
    /// A device on `tap` with address `mac`.
    pub fn new(tap: Tap, mac: [u8; 6]) -> Self {
        Self {
            tap,
            mac,
            active: None,
            frame: vec![0; FRAME_MAX],
            pending: None,
            listening: true,
        }
    }

    fn listen(&mut self, on: bool, ops: &mut EventOps) {
        if on == self.listening {
            return;
        }
        let fd = self.tap.file.as_raw_fd();
        let r = if on {
            ops.add(Events::new_raw(fd, EventSet::IN))
        } else {
            ops.remove(Events::empty_raw(fd))
        };
        if r.is_ok() {
            self.listening = on;
        }
    }

    /// Reads the next frame from the TAP into `frame` behind a zeroed header.
    fn read_frame(&mut self) -> Option<usize> {
        self.frame[..HDR_LEN].fill(0);
        // num_buffers = 1: the frame fits one receive buffer (no MRG_RXBUF).
        self.frame[10] = 1;
        match self.tap.file.read(&mut self.frame[HDR_LEN..]) {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(HDR_LEN + n),
        }
    }

    /// Moves frames from the TAP into the guest's receive buffers until one side runs out.
    fn receive(&mut self, ops: &mut EventOps) -> Served {
        let Some(mut active) = self.active.take() else {
            // Not running: frames for a guest that cannot take them are dropped.
            while self.read_frame().is_some() {}
            return Ok(());
        };
        let mut delivered = false;
        let mut result = Ok(());
        while let Some(len) = self.pending.take().or_else(|| self.read_frame()) {
            let Active {
                mem, queues, log, ..
            } = &mut active;
            let Some(queue) = queues.get_mut(RX) else {
                break;
            };
            let chain = match pop_chain(queue, mem, RX) {
                Ok(Some(chain)) => chain,
                Ok(None) => {
                    // No buffer: keep the frame, stop reading until the guest adds buffers.
                    self.pending = Some(len);
                    self.listen(false, ops);
                    break;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let head = chain.head_index();
            let written = write_to_chain(chain, mem, &self.frame[..len]);
            if written < len {
                crate::guest_log!(
                    log,
                    log::Level::Debug,
                    "a {len}-byte frame did not fit a receive buffer; dropped"
                );
            }
            if queue.add_used(&*mem, head, written as u32).is_err() {
                break;
            }
            delivered = true;
        }
        if delivered {
            active.notify(RX);
        }
        self.active = Some(active);
        result
    }

    /// Sends every frame the guest queued for transmission.
    fn transmit(&mut self) -> Served {
        let Some(mut active) = self.active.take() else {
            return Ok(());
        };
        let mut sent = false;
        let mut result = Ok(());
        loop {
            let Active { mem, queues, .. } = &mut active;
            let Some(queue) = queues.get_mut(TX) else {
                break;
            };
            let chain = match pop_chain(queue, mem, TX) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let head = chain.head_index();
            let mut len = 0usize;
            let mut fits = true;
            for d in chain {
                if d.is_write_only() {
                    continue;
                }
                let n = d.len() as usize;
                if len + n > FRAME_MAX {
                    fits = false;
                    break;
                }
                if mem
                    .read_slice(&mut self.frame[len..len + n], d.addr())
                    .is_err()
                {
                    fits = false;
                    break;
                }
                len += n;
            }
            if fits && len > HDR_LEN {
                // A full TAP queue drops the frame, as a congested link would.
                let _ = self.tap.file.write(&self.frame[HDR_LEN..len]);
            }
            if queue.add_used(&*mem, head, 0).is_err() {
                break;
            }
            sent = true;
        }
        if sent {
            active.notify(TX);
        }
        self.active = Some(active);
        result
    }
}

/// Copies `data` into the writable descriptors of `chain`; returns how much fitted.
fn write_to_chain<M>(
    chain: virtio_queue::DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    data: &[u8],
) -> usize
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut done = 0;
    for d in chain.writable() {
        if done == data.len() {
            break;
        }
        let n = (d.len() as usize).min(data.len() - done);
        if mem.write_slice(&data[done..done + n], d.addr()).is_err() {
            break;
        }
        done += n;
    }
    done
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.mac, offset, data);
    }

    fn active_queues(&self) -> Option<&[Queue]> {
        self.active.as_ref().map(|a| a.queues.as_slice())
    }

    fn activate(&mut self, active: Active) {
        self.active = Some(active);
    }

    fn reset(&mut self) {
        self.active = None;
        self.pending = None;
    }

    fn host_fds(&self) -> Vec<RawFd> {
        vec![self.tap.file.as_raw_fd()]
    }

    fn queue_event(&mut self, queue: usize, ops: &mut EventOps) -> Served {
        match queue {
            RX => {
                // New receive buffers: deliver what waited, and read the TAP again.
                self.listen(true, ops);
                self.receive(ops)
            }
            TX => self.transmit(),
            _ => Ok(()),
        }
    }

    fn host_event(&mut self, _events: Events, ops: &mut EventOps) -> Served {
        self.receive(ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_macs_are_local_unicast_and_stable() {
        let a = default_mac("tap0");
        assert_eq!(a, default_mac("tap0"));
        assert_ne!(a, default_mac("tap1"));
        assert_eq!(a[0] & 0b11, 0b10);
    }

    #[test]
    fn missing_and_odd_taps_are_named() {
        let e = Tap::open("ember-no-such-tap").err().unwrap().to_string();
        assert!(
            e.contains("ember-no-such-tap") && e.contains("ip tuntap add"),
            "{e}"
        );
        // A network device that is not a TAP.
        let e = Tap::open("lo").err().unwrap().to_string();
        assert!(e.contains("not a TAP device"), "{e}");
        let e = Tap::open("../etc").err().unwrap().to_string();
        assert!(e.contains("no such network device"), "{e}");
    }
}
