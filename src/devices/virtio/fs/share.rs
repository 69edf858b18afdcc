//! A host directory made ready to share: a private, detached copy of its mounts that the
//! kernel itself keeps read-only (for a read-only share), without set-user-id or device files
//! (every share), where ember may make one; the device numbers of the pseudo file systems the
//! guest must not enter; and the passthrough file system over it, under [`Policy`].
//!
//! The copy comes from `open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)`: a tree of mounts that no
//! mount namespace sees and that vanishes when its file descriptor closes, however ember
//! exits, so nothing is left mounted behind; `mount_setattr` then marks the whole copy
//! read-only, `nosuid` and `nodev`. That needs CAP_SYS_ADMIN. Without it (ember run by a plain
//! user with access to /dev/kvm) the share is served from the directory itself, and only
//! [`Policy`] holds it read-only: still on the host side, but in ember rather than in the
//! kernel. `Share::kernel_read_only` says which.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

use super::policy::Policy;

/// The file systems a guest never enters through a share: the host's own views of itself.
const HIDDEN_TYPES: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "tracefs",
    "bpf",
    "configfs",
    "pstore",
    "efivarfs",
    "mqueue",
    "hugetlbfs",
    "fusectl",
    "binfmt_misc",
    "autofs",
    "selinuxfs",
    "rpc_pipefs",
    "nsfs",
];

const OPEN_TREE_CLONE: u32 = 1;
const AT_RECURSIVE: u32 = 0x8000;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// `struct mount_attr` (linux/mount.h).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Errors preparing a share.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// The directory cannot be opened.
    #[error("cannot open {path} to share it ({source})")]
    Open {
        /// The directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The passthrough file system refused it.
    #[error("cannot serve {path} ({source})")]
    Serve {
        /// The directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// The file system a share is served with.
pub type SharedFs = Policy<PassthroughFs<()>>;

/// A host directory ready to be served.
pub struct Share {
    /// The file system, under the share's rules.
    pub fs: std::sync::Arc<SharedFs>,
    /// The detached copy of the directory's mounts, if ember could make one: closed (and
    /// gone) with the share.
    mount: Option<OwnedFd>,
    /// Whether the kernel, not only ember, keeps it read-only.
    pub kernel_read_only: bool,
}

impl Share {
    /// Prepares `path` to be shared, writable or not.
    pub fn prepare(path: &Path, writable: bool) -> Result<Self, ShareError> {
        let shown = path.display().to_string();
        let mount = detached_copy(path, writable);
        let root = match &mount {
            // The copy's root, through the process's fd table: `/.` so that the last step is
            // not the magic link itself (the file system opens its root with O_NOFOLLOW).
            Some(fd) => format!("/proc/self/fd/{}/.", fd.as_raw_fd()),
            None => std::fs::canonicalize(path)
                .map_err(|source| ShareError::Open {
                    path: shown.clone(),
                    source,
                })?
                .display()
                .to_string(),
        };
        // A read-only tree does not change under the guest (ember's own promise of a
        // stable view, as vng's): cache everything. A writable one may change on the host
        // too: the guest revalidates.
        let (cache_policy, timeout) = if writable {
            (CachePolicy::Auto, Duration::from_secs(1))
        } else {
            (CachePolicy::Always, Duration::from_secs(86400))
        };
        let cfg = Config {
            root_dir: root,
            do_import: true,
            xattr: false,
            writeback: false,
            no_open: false,
            cache_policy,
            entry_timeout: timeout,
            attr_timeout: timeout,
            ..Default::default()
        };
        let fs = PassthroughFs::new(cfg).map_err(|source| ShareError::Serve {
            path: shown.clone(),
            source,
        })?;
        Ok(Self {
            fs: std::sync::Arc::new(Policy::new(fs, writable, hidden_devices())),
            kernel_read_only: mount.is_some() && !writable,
            mount,
        })
    }

    /// Whether ember made a detached copy of the mounts (it could: CAP_SYS_ADMIN).
    pub fn is_detached(&self) -> bool {
        self.mount.is_some()
    }
}

/// A detached copy of the mounts at and under `path`, read-only unless `writable`, never
/// set-user-id or device files; `None` if ember may not make one.
fn detached_copy(path: &Path, writable: bool) -> Option<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a live NUL-terminated path; the flags ask for a new detached mount fd.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as u32 | AT_RECURSIVE,
        )
    };
    if fd < 0 {
        log::debug!(
            "share {}: no detached mount ({}); ember alone keeps it as shared",
            path.display(),
            std::io::Error::last_os_error()
        );
        return None;
    }
    // SAFETY: open_tree returned a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_NOSUID
            | MOUNT_ATTR_NODEV
            | if writable { 0 } else { MOUNT_ATTR_RDONLY },
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the fd is a detached mount we own; an empty path with AT_EMPTY_PATH means the
    // fd itself; `attr` is a live mount_attr of the size given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as u32 | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        log::debug!(
            "share {}: cannot mark the detached mount ({}); ember alone keeps it as shared",
            path.display(),
            std::io::Error::last_os_error()
        );
        return None;
    }
    Some(fd)
}

/// The device numbers of every mounted pseudo file system ([`HIDDEN_TYPES`]), from
/// /proc/self/mountinfo.
fn hidden_devices() -> HashSet<u64> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return HashSet::new();
    };
    parse_hidden(&text)
}

fn parse_hidden(mountinfo: &str) -> HashSet<u64> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // id parent major:minor root mountpoint options [optional...] - type source ...
            let (front, back) = line.split_once(" - ")?;
            let fstype = back.split_whitespace().next()?;
            if !HIDDEN_TYPES.contains(&fstype) {
                return None;
            }
            let (major, minor) = front.split_whitespace().nth(2)?.split_once(':')?;
            Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_file_systems_are_found_in_mountinfo() {
        let info = "\
22 27 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw
23 27 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
27 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 23 0:26 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw
31 27 0:5 / /dev rw,nosuid - devtmpfs udev rw,size=4k
";
        let got = parse_hidden(info);
        assert_eq!(got.len(), 4);
        assert!(got.contains(&libc::makedev(0, 21)));
        assert!(
            !got.contains(&libc::makedev(254, 1)),
            "the root file system is shared"
        );
        // This host's own /proc is among them.
        let proc_dev = std::fs::metadata("/proc").map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.dev()
        });
        if let Ok(d) = proc_dev {
            assert!(hidden_devices().contains(&d));
        }
    }
}
