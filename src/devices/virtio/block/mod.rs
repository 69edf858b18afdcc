//! virtio-blk: a disk backed by a host file. Reads, writes, flushes and the device id
//! (`drive_id`), served on the VMM thread with `pread`/`pwrite`/`fdatasync` through one
//! bounded buffer, so a guest's requests, whatever their size, cost no host memory. A
//! read-only disk refuses writes itself (IOERR), whatever the driver believes. Data a guest
//! wrote is in the host file as soon as its request completes (the page cache), and durable
//! once it flushed.

pub mod request;

use std::fs::File;
use std::io::Seek;
use std::os::unix::fs::FileExt;
use std::path::Path;

use event_manager::EventOps;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::{Active, Served, VirtioDevice, pop_chain, read_config_bytes};
use request::{Kind, Request, parse};

/// virtio_ids: block device.
const DEVICE_TYPE: u32 = 2;
/// Feature bits (virtio 1.2, 5.2.3).
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
/// Status values.
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// The serial number's size.
const ID_BYTES: usize = 20;
const SECTOR: u64 = 512;
/// Descriptors in the one request queue.
const QUEUE_SIZE: u16 = 256;
/// The bounce buffer between the file and guest memory.
const CHUNK: usize = 64 << 10;

/// Errors opening the backing file.
#[derive(Debug, thiserror::Error)]
#[error("cannot open {path} as a disk ({source})")]
pub struct BlockError {
    path: String,
    source: std::io::Error,
}

/// A virtio block device.
pub struct Block {
    id: String,
    file: File,
    read_only: bool,
    /// Size in 512-byte sectors (a partial last sector is not part of the disk).
    sectors: u64,
    buf: Vec<u8>,
    active: Option<Active>,
}

impl Block {
    /// A disk backed by `path`, writable unless `read_only`, whose serial number is `id`.
    pub fn open(id: &str, path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let err = |source| BlockError {
            path: path.display().to_string(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(err)?;
        // The end's offset is the size of a block device too (its metadata says 0).
        let len = file.seek(std::io::SeekFrom::End(0)).map_err(err)?;
        if !len.is_multiple_of(SECTOR) {
            log::warn!(
                "disk {}: {len} bytes is not a whole number of 512-byte sectors; the last {} bytes are left out",
                path.display(),
                len % SECTOR
            );
        }
        Ok(Self {
            id: id.to_string(),
            file,
            read_only,
            sectors: len / SECTOR,
            buf: vec![0; CHUNK],
            active: None,
        })
    }

    fn config(&self) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..8].copy_from_slice(&self.sectors.to_le_bytes());
        // size_max (offset 8) unused; seg_max at 12.
        c[12..16].copy_from_slice(&(request::MAX_SEGMENTS as u32).to_le_bytes());
        c
    }

    /// Whether `len` bytes from `sector` lie inside the disk.
    fn in_range(&self, sector: u64, len: u64) -> Option<u64> {
        let start = sector.checked_mul(SECTOR)?;
        let end = start.checked_add(len)?;
        (end <= self.sectors * SECTOR).then_some(start)
    }

    /// Serves one request; returns its status and how many bytes it wrote into the guest
    /// (the status byte included).
    pub fn execute(&mut self, req: &Request, mem: &GuestMemoryMmap) -> (u8, u32) {
        let total: u64 = req.data.iter().map(|&(_, len)| u64::from(len)).sum();
        match req.kind {
            Kind::In => {
                let Some(mut pos) = self.in_range(req.sector, total) else {
                    return (S_IOERR, 1);
                };
                for &(addr, len) in &req.data {
                    if self.transfer(addr, len, &mut pos, mem, true).is_err() {
                        return (S_IOERR, 1);
                    }
                }
                (S_OK, total as u32 + 1)
            }
            Kind::Out => {
                if self.read_only {
                    return (S_IOERR, 1);
                }
                let Some(mut pos) = self.in_range(req.sector, total) else {
                    return (S_IOERR, 1);
                };
                for &(addr, len) in &req.data {
                    if self.transfer(addr, len, &mut pos, mem, false).is_err() {
                        return (S_IOERR, 1);
                    }
                }
                (S_OK, 1)
            }
            Kind::Flush => match self.file.sync_data() {
                Ok(()) => (S_OK, 1),
                Err(_) => (S_IOERR, 1),
            },
            Kind::GetId => {
                let mut id = [0u8; ID_BYTES];
                let n = self.id.len().min(ID_BYTES);
                id[..n].copy_from_slice(&self.id.as_bytes()[..n]);
                let mut written = 0u32;
                let mut rest = &id[..];
                for &(addr, len) in &req.data {
                    let n = rest.len().min(len as usize);
                    if mem.write_slice(&rest[..n], addr).is_err() {
                        return (S_IOERR, 1);
                    }
                    written += n as u32;
                    rest = &rest[n..];
                }
                (S_OK, written + 1)
            }
            Kind::Unsupported(_) => (S_UNSUPP, 1),
        }
    }

    /// Moves one data segment between the file at `*pos` and guest memory at `addr`, through
    /// the bounce buffer: into the guest if `to_guest`.
    fn transfer(
        &mut self,
        addr: GuestAddress,
        len: u32,
        pos: &mut u64,
        mem: &GuestMemoryMmap,
        to_guest: bool,
    ) -> Result<(), ()> {
        let mut done = 0u64;
        while done < u64::from(len) {
            let n = (u64::from(len) - done).min(CHUNK as u64) as usize;
            let at = addr.checked_add(done).ok_or(())?;
            let buf = &mut self.buf[..n];
            if to_guest {
                self.file.read_exact_at(buf, *pos).map_err(|_| ())?;
                mem.write_slice(buf, at).map_err(|_| ())?;
            } else {
                mem.read_slice(buf, at).map_err(|_| ())?;
                self.file.write_all_at(buf, *pos).map_err(|_| ())?;
            }
            done += n as u64;
            *pos += n as u64;
        }
        Ok(())
    }

    /// Serves every request the driver has made available.
    fn process_queue(&mut self) -> Served {
        let Some(mut active) = self.active.take() else {
            return Ok(());
        };
        let result = self.serve(&mut active);
        active.notify(0);
        self.active = Some(active);
        result
    }

    fn serve(&mut self, active: &mut Active) -> Served {
        loop {
            let Active {
                mem, queues, log, ..
            } = &mut *active;
            let Some(queue) = queues.get_mut(0) else {
                return Ok(());
            };
            let Some(chain) = pop_chain(queue, mem, 0)? else {
                return Ok(());
            };
            let head = chain.head_index();
            let used = match parse(chain, &*mem) {
                Ok(req) => {
                    let (status, written) = self.execute(&req, mem);
                    match mem.write_obj(status, req.status) {
                        Ok(()) => written,
                        Err(_) => 0,
                    }
                }
                Err(e) => {
                    // Not a request: hand the descriptors back untouched.
                    crate::guest_log!(log, log::Level::Debug, "{e}");
                    0
                }
            };
            if let Err(e) = queue.add_used(&*mem, head, used) {
                crate::guest_log!(log, log::Level::Debug, "cannot return a request: {e}");
                return Ok(());
            }
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        F_SEG_MAX | F_FLUSH | if self.read_only { F_RO } else { 0 }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn active_queues(&self) -> Option<&[Queue]> {
        self.active.as_ref().map(|a| a.queues.as_slice())
    }

    fn activate(&mut self, active: Active) {
        self.active = Some(active);
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn queue_event(&mut self, _queue: usize, _ops: &mut EventOps) -> Served {
        self.process_queue()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(read_only: bool) -> (Block, std::path::PathBuf) {
        let p =
            std::env::temp_dir().join(format!("ember-blk-{}-{}", std::process::id(), read_only));
        let mut data = vec![0u8; 4096];
        data[..4].copy_from_slice(b"boot");
        data[1024..1028].copy_from_slice(b"sec2");
        std::fs::write(&p, data).unwrap();
        (
            Block::open("disk-id-that-is-much-too-long", &p, read_only).unwrap(),
            p,
        )
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn req(kind: Kind, sector: u64, data: Vec<(u64, u32)>) -> Request {
        Request {
            kind,
            sector,
            data: data
                .into_iter()
                .map(|(a, l)| (GuestAddress(a), l))
                .collect(),
            status: GuestAddress(0x9000),
        }
    }

    #[test]
    fn reads_writes_flush_and_id() {
        let (mut b, p) = disk(false);
        let m = mem();
        assert_eq!(b.sectors, 8);
        // Two segments across sectors 2 and 3.
        let (s, n) = b.execute(&req(Kind::In, 2, vec![(0x1000, 4), (0x2000, 508)]), &m);
        assert_eq!((s, n), (S_OK, 513));
        let mut got = [0u8; 4];
        m.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        assert_eq!(&got, b"sec2");
        m.write_slice(b"new!", GuestAddress(0x3000)).unwrap();
        assert_eq!(
            b.execute(&req(Kind::Out, 7, vec![(0x3000, 512)]), &m),
            (S_OK, 1)
        );
        assert_eq!(b.execute(&req(Kind::Flush, 0, vec![]), &m), (S_OK, 1));
        assert_eq!(&std::fs::read(&p).unwrap()[3584..3588], b"new!");
        let (s, n) = b.execute(&req(Kind::GetId, 0, vec![(0x4000, 64)]), &m);
        assert_eq!((s, n), (S_OK, 21));
        let mut id = [0u8; 20];
        m.read_slice(&mut id, GuestAddress(0x4000)).unwrap();
        assert_eq!(&id, b"disk-id-that-is-much");
        assert_eq!(
            b.execute(&req(Kind::Unsupported(11), 0, vec![]), &m),
            (S_UNSUPP, 1)
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn out_of_range_and_read_only_fail() {
        let (mut b, p) = disk(true);
        let m = mem();
        assert_ne!(b.features() & F_RO, 0);
        for r in [
            req(Kind::In, 8, vec![(0x1000, 512)]),
            req(Kind::In, 7, vec![(0x1000, 1024)]),
            req(Kind::In, u64::MAX / 2, vec![(0x1000, 512)]),
            req(Kind::Out, 0, vec![(0x1000, 512)]),
        ] {
            assert_eq!(b.execute(&r, &m), (S_IOERR, 1), "{r:?}");
        }
        assert_eq!(&std::fs::read(&p).unwrap()[..4], b"boot");
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn config_space() {
        let (b, p) = disk(false);
        let mut d = [0u8; 8];
        b.read_config(0, &mut d);
        assert_eq!(u64::from_le_bytes(d), 8);
        let mut d = [0u8; 4];
        b.read_config(12, &mut d);
        assert_eq!(u32::from_le_bytes(d), request::MAX_SEGMENTS as u32);
        std::fs::remove_file(p).unwrap();
    }
}
