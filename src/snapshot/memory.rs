//! The memory file: guest RAM, region after region in guest-address order, written sparse
//! (a page of zeros is left a hole, so a booted tiny guest's 64 MiB take a few hundred KiB on
//! disk), and mapped back private, copy-on-write: a restored VM reads its pages from the page
//! cache, shared with every other VM restored from the same file, and only the pages it
//! writes become its own. Faulted in lazily, as the guest touches them.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion, GuestRegionMmap,
};

use super::checksum::Checksum;
use crate::arch::x86_64::layout;

/// The unit of holes and of the checksum.
const PAGE: usize = 4096;
/// How much is copied out of guest memory, or read from the file, at a time.
const CHUNK: usize = 1 << 20;

/// What the state file records of the memory file, to check it before a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryFacts {
    /// Its size: the guest's RAM.
    pub size: u64,
    /// Its checksum: every page that is not all zeros, with its index.
    pub checksum: u64,
    /// The file as written: while it still matches, nothing has written the file since (a
    /// write moves its ctime, which no one can set back) and it is not a copy (another
    /// inode), so the contents need no reading.
    #[serde(default)]
    pub stamp: Option<FileStamp>,
}

/// What identifies a file's contents without reading them: which file it is, its size, and
/// when it was last written (modification and status change times, in nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    /// `file`'s stamp now. The fstat system call itself: glibc's `fstat` is `newfstatat`,
    /// which takes a path, and the VMM thread's filter allows only the fd's.
    pub fn of(file: &File) -> io::Result<Self> {
        use std::os::fd::AsRawFd;
        // SAFETY: an all-zero stat is a valid value for fstat to fill.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes only into `st`, on an fd this File owns.
        let rc = unsafe { libc::syscall(libc::SYS_fstat, file.as_raw_fd(), &mut st) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        })
    }
}

/// How [`check`] found the memory file to be the snapshot's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// Unwritten since the snapshot, by its stamp.
    Unchanged,
    /// By reading its data and summing it.
    Contents,
}

/// Adds `data`, which starts at page `first`, to the checksum; `write` gets each run of pages
/// that are not all zeros, with its offset in the file.
fn pages(
    data: &[u8],
    first: u64,
    sum: &mut Checksum,
    mut write: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut run: Option<usize> = None;
    for (i, page) in data.chunks(PAGE).enumerate() {
        let zero = page.iter().all(|&b| b == 0);
        if !zero {
            sum.word(first + i as u64);
            sum.bytes(page);
            run.get_or_insert(i);
        } else if let Some(start) = run.take() {
            write(
                (first + start as u64) * PAGE as u64,
                &data[start * PAGE..i * PAGE],
            )?;
        }
    }
    if let Some(start) = run {
        write((first + start as u64) * PAGE as u64, &data[start * PAGE..])?;
    }
    Ok(())
}

/// Writes `mem` into `file` (empty, opened for writing) and makes it durable. Call with every
/// vCPU paused and no device writing guest memory.
pub fn write(file: &File, mem: &GuestMemoryMmap) -> io::Result<MemoryFacts> {
    let mut sum = Checksum::default();
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    for region in mem.iter() {
        let len = region.len();
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            let chunk = &mut buf[..n];
            mem.read_slice(chunk, region.start_addr().unchecked_add(done))
                .map_err(|e| io::Error::other(format!("reading guest memory: {e}")))?;
            pages(
                chunk,
                (offset + done) / PAGE as u64,
                &mut sum,
                |at, bytes| file.write_all_at(bytes, at),
            )?;
            done += n as u64;
        }
        offset += len;
    }
    // The file's size is the RAM's even when its last page is a hole.
    if offset > 0 {
        let mut last = [0u8; 1];
        mem.read_slice(&mut last, last_byte(mem))
            .map_err(|e| io::Error::other(format!("reading guest memory: {e}")))?;
        file.write_all_at(&last, offset - 1)?;
    }
    sum.word(offset);
    file.sync_data()?;
    Ok(MemoryFacts {
        size: offset,
        checksum: sum.value(),
        stamp: Some(FileStamp::of(file)?),
    })
}

/// The guest address of the last byte of RAM.
fn last_byte(mem: &GuestMemoryMmap) -> GuestAddress {
    mem.iter()
        .last()
        .map(|r| r.start_addr().unchecked_add(r.len() - 1))
        .unwrap_or(GuestAddress(0))
}

/// Whether `file` is the memory file `facts` describe: `Err` says how it differs (its size, or
/// its contents).
pub fn check(file: &File, facts: &MemoryFacts) -> Result<Verified, String> {
    let now = FileStamp::of(file).map_err(|e| e.to_string())?;
    let size = now.size;
    if size != facts.size {
        return Err(format!(
            "it is {size} bytes, the snapshot's memory was {}",
            facts.size
        ));
    }
    if facts.stamp == Some(now) {
        return Ok(Verified::Unchanged);
    }
    let mut sum = Checksum::default();
    let mut buf = vec![0u8; CHUNK];
    // Only the file's data is read: a hole is zero pages, which the sum leaves out anyway, so
    // the check costs the guest's written memory, not its size.
    for (start, end) in data_extents(file, size).map_err(|e| e.to_string())? {
        let mut offset = start;
        while offset < end {
            let n = (end - offset).min(CHUNK as u64) as usize;
            file.read_exact_at(&mut buf[..n], offset)
                .map_err(|e| e.to_string())?;
            pages(&buf[..n], offset / PAGE as u64, &mut sum, |_, _| Ok(()))
                .map_err(|e| e.to_string())?;
            offset += n as u64;
        }
    }
    sum.word(size);
    if sum.value() != facts.checksum {
        return Err("its contents changed since the snapshot (the checksum differs)".into());
    }
    Ok(Verified::Contents)
}

/// The page-aligned ranges of `file` (of `size` bytes) that hold data, from SEEK_DATA and
/// SEEK_HOLE; the whole file where the file system cannot say.
fn data_extents(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let seek = |offset: u64, whence: libc::c_int| -> io::Result<Option<u64>> {
        // SAFETY: lseek on an fd this function borrows; no memory is passed.
        let r = unsafe { libc::lseek(fd, offset as libc::off_t, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        match io::Error::last_os_error() {
            // No data past `offset`.
            e if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
            e => Err(e),
        }
    };
    let mut extents = Vec::new();
    let mut at = 0u64;
    while at < size {
        let start = match seek(at, libc::SEEK_DATA) {
            Ok(Some(s)) => s,
            Ok(None) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(vec![(0, size)]),
            Err(e) => return Err(e),
        };
        let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
        let page = PAGE as u64;
        let (start, end) = (start / page * page, end.div_ceil(page) * page);
        extents.push((start, end.min(size)));
        at = end;
    }
    Ok(extents)
}

/// Maps `file` as the guest RAM of a `mem_size` VM, private and copy-on-write.
pub fn map(file: &File, mem_size: u64) -> io::Result<GuestMemoryMmap> {
    let mut offset = 0u64;
    let mut regions = Vec::new();
    for (start, len) in layout::ram_ranges(mem_size) {
        let fd = file.try_clone()?;
        let mapping = MmapRegionBuilder::new(len as usize)
            .with_file_offset(FileOffset::new(fd, offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| io::Error::other(format!("mapping the memory file: {e}")))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or_else(|| io::Error::other("a memory region past the address space"))?;
        regions.push(region);
        offset += len;
    }
    GuestMemoryMmap::from_regions(regions)
        .map_err(|e| io::Error::other(format!("the restored guest's memory: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_for_zero_pages_and_a_sum_the_check_agrees_with() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 * PAGE)]).unwrap();
        mem.write_slice(b"hello", GuestAddress(3 * PAGE as u64 + 10))
            .unwrap();
        mem.write_slice(b"end", GuestAddress(64 * PAGE as u64 - 3))
            .unwrap();
        let dir = std::env::temp_dir().join(format!("ember-mem-{}", std::process::id()));
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&dir)
            .unwrap();
        let facts = write(&f, &mem).unwrap();
        assert_eq!(facts.size, 64 * PAGE as u64);
        assert_eq!(check(&f, &facts), Ok(Verified::Unchanged));
        let mut b = [0u8; 5];
        f.read_exact_at(&mut b, 3 * PAGE as u64 + 10).unwrap();
        assert_eq!(&b, b"hello");
        // File times move once per kernel tick: the writes below come a tick or more later,
        // as anything but ember itself writing the file in the same few milliseconds would.
        std::thread::sleep(std::time::Duration::from_millis(20));
        // A flipped byte in a hole, then in a page with data: both found.
        f.write_all_at(&[1], 20 * PAGE as u64).unwrap();
        assert!(check(&f, &facts).is_err());
        f.write_all_at(&[0], 20 * PAGE as u64).unwrap();
        assert_eq!(check(&f, &facts), Ok(Verified::Contents));
        f.write_all_at(b"j", 3 * PAGE as u64 + 10).unwrap();
        assert!(check(&f, &facts).unwrap_err().contains("checksum"));
        f.set_len(63 * PAGE as u64).unwrap();
        assert!(check(&f, &facts).unwrap_err().contains("bytes"));
        drop(f);
        let _ = std::fs::remove_file(&dir);
    }
}
