//! virtio-fs: a host directory the guest mounts (`mount -t virtiofs TAG DIR`), served in
//! ember by fuse-backend-rs's FUSE server over its passthrough file system, under ember's own
//! rules ([`policy`]) on a tree prepared on the host side ([`share`]).
//!
//! Each device has one thread of its own, under its own seccomp filter, started (and
//! confined) while the VM is built: it waits on the device's two queues (high priority and
//! requests), runs each request through the server, and raises the device's interrupt. The
//! vCPU threads only touch the transport's registers, the event loop never waits on a file.
//! docs/host-work.md has the choices and their measures.

pub mod legacy;
pub mod policy;
pub mod share;
mod worker;

use std::sync::Arc;

use event_manager::EventOps;

use super::{Active, Served, VirtioDevice, read_config_bytes};
use crate::placement::Placement;
pub use share::{Share, ShareError};
use worker::Worker;

/// virtio_ids: file system device.
const DEVICE_TYPE: u32 = 26;
/// The high-priority queue (FORGET, INTERRUPT) and one request queue.
const QUEUE_SIZES: [u16; 2] = [128, 1024];
/// The tag's room in the configuration space.
pub const TAG_MAX: usize = 36;

/// Errors setting the device up.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag does not fit.
    #[error("the virtio-fs tag {0:?} is longer than {TAG_MAX} bytes")]
    Tag(String),
    /// The share could not be prepared.
    #[error(transparent)]
    Share(#[from] ShareError),
    /// Its thread could not be started.
    #[error("cannot start the thread serving {tag}: {source}")]
    Thread {
        /// The share's tag.
        tag: String,
        /// The error.
        source: std::io::Error,
    },
}

/// A virtio-fs device.
pub struct Fs {
    config: [u8; TAG_MAX + 4],
    worker: Worker,
}

impl Fs {
    /// Serves `share` under `tag`, on a thread started now (on the CPUs `placement` names),
    /// confined by its own seccomp filter unless `seccomp` is false.
    pub fn new(
        tag: &str,
        share: Share,
        placement: Option<&Placement>,
        seccomp: bool,
    ) -> Result<Self, FsError> {
        if tag.len() > TAG_MAX || tag.is_empty() {
            return Err(FsError::Tag(tag.to_string()));
        }
        let mut config = [0u8; TAG_MAX + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_MAX..].copy_from_slice(&1u32.to_le_bytes());
        let worker = Worker::start(tag, Arc::new(share), placement, seccomp).map_err(|source| {
            FsError::Thread {
                tag: tag.to_string(),
                source,
            }
        })?;
        Ok(Self { config, worker })
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn snapshot_refusal(&self) -> Option<String> {
        Some(
            "virtio-fs serves the host's files from threads whose state a snapshot cannot hold yet"
                .into(),
        )
    }

    fn activate(&mut self, active: Active) {
        self.worker.serve(active);
    }

    fn reset(&mut self) {
        self.worker.idle();
    }

    fn serves_own_queues(&self) -> bool {
        true
    }

    fn queue_event(&mut self, _queue: usize, _ops: &mut EventOps) -> Served {
        // Never called: the worker waits on the queues itself.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use virtio_queue::Queue;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    use super::*;
    use crate::devices::virtio::Interrupt;
    use crate::guest_log::LogLimit;

    const REQUEST: u64 = 0x10_0000;
    const REPLY: u64 = 0x20_0000;
    const VRING_DESC_F_WRITE: u16 = 2;
    const FUSE_LOOKUP: u32 = 1;
    const FUSE_MKDIR: u32 = 9;
    const FUSE_INIT: u32 = 26;

    /// A device over a fresh directory holding `hello.txt`, activated on mock queues.
    struct Bench {
        mem: GuestMemoryMmap,
        _fs: Fs,
        /// The request queue's rings (a mock queue zeroes them when made: made once).
        avail: GuestAddress,
        used: GuestAddress,
        interrupt: Arc<Interrupt>,
        notify: Vec<Arc<EventFd>>,
        used_seen: u16,
        unique: u64,
        dir: std::path::PathBuf,
    }

    impl Bench {
        fn new(tag: &str, writable: bool) -> Self {
            let dir = std::env::temp_dir().join(format!("ember-fs-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("hello.txt"), b"hello, guest\n").unwrap();
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
            let share = Share::prepare(&dir, writable).unwrap();
            let mut fs = Fs::new(tag, share, None, false).unwrap();
            let hiprio = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
            let req = MockSplitQueue::new(&mem, 16);
            let queues: Vec<Queue> =
                vec![hiprio.create_queue().unwrap(), req.create_queue().unwrap()];
            let (avail, used) = (req.avail_addr(), req.used_addr());
            let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
            let notify: Vec<Arc<EventFd>> = (0..2)
                .map(|_| Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()))
                .collect();
            fs.activate(Active {
                mem: mem.clone(),
                queues,
                interrupt: interrupt.clone(),
                features: 0,
                log: Arc::new(LogLimit::new("virtio-fs test")),
                queue_evts: notify.clone(),
            });
            Self {
                mem,
                _fs: fs,
                avail,
                used,
                interrupt,
                notify,
                used_seen: 0,
                unique: 1,
                dir,
            }
        }

        /// Sends one FUSE request (`opcode` on `nodeid`, then `body`) on the request queue;
        /// returns the reply's error and body.
        fn request(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> (i32, Vec<u8>) {
            let len = 40 + body.len() as u32;
            let mut msg = Vec::new();
            msg.extend_from_slice(&len.to_le_bytes());
            msg.extend_from_slice(&opcode.to_le_bytes());
            msg.extend_from_slice(&self.unique.to_le_bytes());
            msg.extend_from_slice(&nodeid.to_le_bytes());
            msg.extend_from_slice(&0u32.to_le_bytes()); // uid
            msg.extend_from_slice(&0u32.to_le_bytes()); // gid
            msg.extend_from_slice(&1u32.to_le_bytes()); // pid
            msg.extend_from_slice(&[0u8; 4]); // total_extlen, padding
            msg.extend_from_slice(body);
            self.unique += 1;
            self.mem.write_slice(&msg, GuestAddress(REQUEST)).unwrap();
            self.mem
                .write_slice(&[0xffu8; 4096], GuestAddress(REPLY))
                .unwrap();
            // Two descriptors at the next free slots of the table, then the chain's head on
            // the available ring, as a driver does.
            let slot = (self.used_seen % 8) * 2;
            for (i, d) in [
                SplitDescriptor::new(REQUEST, msg.len() as u32, 1, slot + 1),
                SplitDescriptor::new(REPLY, 4096, VRING_DESC_F_WRITE, 0),
            ]
            .into_iter()
            .enumerate()
            {
                let at = GuestAddress(16 * (u64::from(slot) + i as u64));
                self.mem.write_obj(RawDescriptor::from(d), at).unwrap();
            }
            let idx: u16 = self.mem.read_obj(self.avail.unchecked_add(2)).unwrap();
            let entry = self.avail.unchecked_add(4 + 2 * u64::from(idx % 16));
            self.mem.write_obj(slot, entry).unwrap();
            self.mem
                .write_obj(idx.wrapping_add(1), self.avail.unchecked_add(2))
                .unwrap();
            self.notify[1].write(1).unwrap();
            self.wait_used();
            let head: [u8; 16] = self.mem.read_obj(GuestAddress(REPLY)).unwrap();
            let out_len = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
            let error = i32::from_le_bytes(head[4..8].try_into().unwrap());
            let mut reply = vec![0u8; out_len.saturating_sub(16)];
            self.mem
                .read_slice(&mut reply, GuestAddress(REPLY + 16))
                .unwrap();
            (error, reply)
        }

        fn wait_used(&mut self) {
            let start = Instant::now();
            loop {
                let idx: u16 = self.mem.read_obj(self.used.unchecked_add(2)).unwrap();
                if idx != self.used_seen {
                    self.used_seen = idx;
                    return;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "the device answered nothing"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    impl Drop for Bench {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn init_body() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&7u32.to_le_bytes()); // major
        b.extend_from_slice(&38u32.to_le_bytes()); // minor
        b.extend_from_slice(&(128u32 << 10).to_le_bytes()); // max_readahead
        b.extend_from_slice(&[0u8; 4 + 4 + 44]); // flags, flags2, unused
        b
    }

    #[test]
    fn a_driver_gets_init_lookup_and_a_read_only_refusal() {
        let mut b = Bench::new("ro", false);
        let (error, reply) = b.request(FUSE_INIT, 0, &init_body());
        assert_eq!(error, 0);
        assert_eq!(
            u32::from_le_bytes(reply[..4].try_into().unwrap()),
            7,
            "FUSE major"
        );
        // LOOKUP "hello.txt" in the root: its attributes, its size.
        let (error, reply) = b.request(FUSE_LOOKUP, 1, b"hello.txt\0");
        assert_eq!(error, 0);
        // fuse_entry_out: nodeid, generation, entry_valid, attr_valid, their nsecs (40
        // bytes), then fuse_attr: ino, size.
        let size = u64::from_le_bytes(reply[48..56].try_into().unwrap());
        assert_eq!(size, 13);
        let (error, _) = b.request(FUSE_LOOKUP, 1, b"missing\0");
        assert_eq!(error, -libc::ENOENT);
        // MKDIR on a read-only share: refused by the policy, nothing made on the host.
        let mut mkdir = Vec::new();
        mkdir.extend_from_slice(&0o755u32.to_le_bytes());
        mkdir.extend_from_slice(&0u32.to_le_bytes());
        mkdir.extend_from_slice(b"newdir\0");
        let (error, _) = b.request(FUSE_MKDIR, 1, &mkdir);
        assert_eq!(error, -libc::EROFS);
        assert!(!b.dir.join("newdir").exists());
        // The used ring's interrupt was raised.
        assert_ne!(b.interrupt.status() & crate::devices::virtio::INT_VRING, 0);
    }

    #[test]
    fn a_writable_share_makes_directories_on_the_host() {
        let mut b = Bench::new("rw", true);
        assert_eq!(b.request(FUSE_INIT, 0, &init_body()).0, 0);
        let mut mkdir = Vec::new();
        mkdir.extend_from_slice(&0o755u32.to_le_bytes());
        mkdir.extend_from_slice(&0u32.to_le_bytes());
        mkdir.extend_from_slice(b"made-by-the-guest\0");
        assert_eq!(b.request(FUSE_MKDIR, 1, &mkdir).0, 0);
        assert!(b.dir.join("made-by-the-guest").is_dir());
    }

    #[test]
    fn a_broken_queue_stops_the_device_and_asks_for_a_reset() {
        let b = Bench::new("broken", false);
        b.mem
            .write_obj(0x8000u16, b.avail.unchecked_add(2))
            .unwrap();
        b.notify[1].write(1).unwrap();
        let start = Instant::now();
        while !b.interrupt.needs_reset() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no reset asked for"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // The configuration interrupt went out too.
        assert_ne!(b.interrupt.status() & crate::devices::virtio::INT_CONFIG, 0);
    }
}
