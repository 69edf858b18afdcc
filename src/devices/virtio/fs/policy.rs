//! What the guest may do to a shared tree, enforced on the host side around the passthrough
//! file system, whatever the guest kernel says or does (remounts, a root process, crafted
//! FUSE requests):
//!
//! - a read-only share refuses every change (EROFS) and every open for writing, in ember
//!   itself, on top of the kernel's read-only mount under it when ember may make one
//!   (`share.rs`);
//! - no device node is made anywhere (a guest root could otherwise leave one in a writable
//!   directory for a host user to open), and no set-user-id bit is set (nor set-group-id on a
//!   file): the host would honour them;
//! - the host's pseudo file systems under a shared tree (/proc, /sys, /dev, cgroups, ...) are
//!   not entered: the guest sees each as an empty directory (somewhere to mount its own) in
//!   which nothing can be looked up, listed or opened.
//!
//! Paths cannot leave the tree in the first place: the passthrough file system looks names up
//! one at a time, never following a symbolic link on the host (the guest resolves links in
//! its own view), and `..` at the share's root stays there.

use std::collections::HashSet;
use std::ffi::CStr;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, FsOptions, OpenOptions, SetattrValid, stat64, statvfs64,
};
use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, IoctlData, ListxattrReply,
    ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::transport::FsCacheReqHandler;

fn erofs<T>() -> io::Result<T> {
    Err(io::Error::from_raw_os_error(libc::EROFS))
}

fn eperm<T>() -> io::Result<T> {
    Err(io::Error::from_raw_os_error(libc::EPERM))
}

/// Open flags that change a file.
const WRITE_FLAGS: u32 = (libc::O_WRONLY | libc::O_RDWR | libc::O_TRUNC | libc::O_APPEND) as u32;

/// `mode` without the bits the host would honour for a guest: set-user-id always,
/// set-group-id on anything but a directory (where it only means group inheritance).
fn safe_mode(mode: u32) -> u32 {
    let mut m = mode & !libc::S_ISUID;
    if m & libc::S_IFMT != libc::S_IFDIR {
        m &= !libc::S_ISGID;
    }
    m
}

/// A shared tree's rules around the file system `F` that serves it.
pub struct Policy<F> {
    inner: F,
    writable: bool,
    /// Device numbers (`st_dev`) of the host's pseudo file systems: never entered.
    hidden: HashSet<u64>,
    /// The inodes of those file systems' roots the guest has been given: empty directories
    /// to it. Inode numbers are never reused, so one kept past its forget does no harm.
    hidden_inodes: Mutex<HashSet<u64>>,
}

impl<F: FileSystem> Policy<F> {
    /// `inner` served under these rules: writable or not, `hidden` the device numbers of the
    /// file systems the guest must not enter.
    pub fn new(inner: F, writable: bool, hidden: HashSet<u64>) -> Self {
        Self {
            inner,
            writable,
            hidden,
            hidden_inodes: Mutex::new(HashSet::new()),
        }
    }

    fn is_hidden(&self, e: &Entry) -> bool {
        self.hidden.contains(&e.attr.st_dev)
    }

    /// Whether `inode` is a hidden file system's root.
    fn hides(&self, inode: &F::Inode) -> bool
    where
        F::Inode: Copy,
    {
        let n: u64 = (*inode).into();
        self.hidden_inodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&n)
    }

    fn note(&self, e: &Entry) {
        if self.is_hidden(e) {
            self.hidden_inodes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(e.inode);
        }
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.writable { Ok(()) } else { erofs() }
    }

    /// A change in or of `inode`: the share must be writable and `inode` not hidden.
    fn check_change(&self, inode: &F::Inode) -> io::Result<()>
    where
        F::Inode: Copy,
    {
        self.check_writable()?;
        if self.hides(inode) { eacces() } else { Ok(()) }
    }

    /// The answer to a request on a hidden file system's root: `inner` for anything else.
    fn unless_hidden<T>(
        &self,
        inode: &F::Inode,
        hidden: io::Result<T>,
        inner: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T>
    where
        F::Inode: Copy,
    {
        if self.hides(inode) { hidden } else { inner() }
    }
}

fn eacces<T>() -> io::Result<T> {
    Err(io::Error::from_raw_os_error(libc::EACCES))
}

impl<F: FileSystem> FileSystem for Policy<F>
where
    F::Inode: Copy,
{
    type Inode = F::Inode;
    type Handle = F::Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        // No writeback cache: what the guest writes goes to the host at once, so a writable
        // directory's changes are there however the VM ends.
        let mut opts = self.inner.init(capable)?;
        opts.remove(FsOptions::WRITEBACK_CACHE);
        Ok(opts)
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        if self.hides(&parent) {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        let e = self.inner.lookup(ctx, parent, name)?;
        self.note(&e);
        Ok(e)
    }

    fn forget(&self, ctx: &Context, inode: Self::Inode, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Self::Inode, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Option<Self::Handle>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        mut attr: stat64,
        handle: Option<Self::Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.check_change(&inode)?;
        if valid.contains(SetattrValid::MODE) {
            attr.st_mode = safe_mode(attr.st_mode);
        }
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: Self::Inode) -> io::Result<Vec<u8>> {
        self.unless_hidden(&inode, eacces(), || self.inner.readlink(ctx, inode))
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Self::Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.check_change(&parent)?;
        self.inner.symlink(ctx, linkname, parent, name)
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.check_change(&inode)?;
        match mode & libc::S_IFMT {
            libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK => {}
            _ => return eperm(),
        }
        self.inner
            .mknod(ctx, inode, name, safe_mode(mode), rdev, umask)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.check_change(&parent)?;
        self.inner
            .mkdir(ctx, parent, name, mode & !libc::S_ISUID, umask)
    }

    fn unlink(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.check_change(&parent)?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.check_change(&parent)?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Self::Inode,
        oldname: &CStr,
        newdir: Self::Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.check_change(&olddir)?;
        self.check_change(&newdir)?;
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        newparent: Self::Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.check_change(&newparent)?;
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions, Option<u32>)> {
        if flags & WRITE_FLAGS != 0 {
            self.check_writable()?;
        }
        self.unless_hidden(&inode, eacces(), || {
            self.inner.open(ctx, inode, flags, fuse_flags)
        })
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        mut args: CreateIn,
    ) -> io::Result<(Entry, Option<Self::Handle>, OpenOptions, Option<u32>)> {
        self.check_change(&parent)?;
        args.mode = safe_mode(args.mode);
        self.inner.create(ctx, parent, name, args)
    }

    fn read(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.check_writable()?;
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.check_writable()?;
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: Self::Inode) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.check_writable()?;
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.unless_hidden(&inode, eacces(), || {
            self.inner.getxattr(ctx, inode, name, size)
        })
    }

    fn listxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        size: u32,
    ) -> io::Result<ListxattrReply> {
        self.unless_hidden(&inode, eacces(), || self.inner.listxattr(ctx, inode, size))
    }

    fn removexattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr) -> io::Result<()> {
        self.check_writable()?;
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions)> {
        self.inner.opendir(ctx, inode, flags)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.unless_hidden(&inode, Ok(()), || {
            self.inner
                .readdir(ctx, inode, handle, size, offset, add_entry)
        })
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        if self.hides(&inode) {
            return Ok(());
        }
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, &mut |d, e| {
                self.note(&e);
                add_entry(d, e)
            })
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn setupmapping(
        &self,
        _ctx: &Context,
        _inode: Self::Inode,
        _handle: Self::Handle,
        _foffset: u64,
        _len: u64,
        _flags: u64,
        _moffset: u64,
        _vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        // No DAX window: ember's device has no shared memory region.
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }

    fn removemapping(
        &self,
        _ctx: &Context,
        _inode: Self::Inode,
        _requests: Vec<RemovemappingOne>,
        _vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }

    fn access(&self, ctx: &Context, inode: Self::Inode, mask: u32) -> io::Result<()> {
        if mask & libc::W_OK as u32 != 0 {
            self.check_writable()?;
        }
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        self.inner.getlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
    }

    fn ioctl(
        &self,
        _ctx: &Context,
        _inode: Self::Inode,
        _handle: Self::Handle,
        _flags: u32,
        _cmd: u32,
        _data: IoctlData,
        _out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        // Not one host ioctl on the guest's behalf.
        Err(io::Error::from_raw_os_error(libc::ENOTTY))
    }

    fn bmap(
        &self,
        _ctx: &Context,
        _inode: Self::Inode,
        _block: u64,
        _blocksize: u32,
    ) -> io::Result<u64> {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }

    fn poll(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        khandle: Self::Handle,
        flags: u32,
        events: u32,
    ) -> io::Result<u32> {
        self.inner.poll(ctx, inode, handle, khandle, flags, events)
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_lose_what_the_host_would_honour() {
        assert_eq!(safe_mode(libc::S_IFREG | 0o4755), libc::S_IFREG | 0o755);
        assert_eq!(safe_mode(libc::S_IFREG | 0o2755), libc::S_IFREG | 0o755);
        // A directory keeps set-group-id: there it only means group inheritance.
        assert_eq!(safe_mode(libc::S_IFDIR | 0o2775), libc::S_IFDIR | 0o2775);
        assert_eq!(safe_mode(0o644), 0o644);
    }
}
