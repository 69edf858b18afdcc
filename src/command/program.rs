//! Finding the program a `process` names as the guest will find it, before anything boots: a
//! name without `/` on `PATH`, a path from the working directory, each looked up on the host
//! inside the share that holds it (symbolic links resolved inside that share, as the guest
//! will), so that a missing program is one line and exit 127 here, not a guest that boots to
//! say so.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::config::{ConfigError, SharedDir};

/// `PATH` when the process's environment has none (a login shell's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `path` with `.` and `..` taken out, lexically (`..` at the root stays at the root).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// What `guest` (a normalized absolute path in the guest) is on the host: metadata of the
/// file it resolves to inside the share that holds it.
fn stat_in_shares(guest: &Path, shares: &[SharedDir]) -> Option<std::fs::Metadata> {
    let share = shares
        .iter()
        .filter(|s| guest.starts_with(&s.guest_path))
        .max_by_key(|s| s.guest_path.components().count())?;
    let rest = guest.strip_prefix(&share.guest_path).ok()?;
    let root = std::fs::File::open(&share.path_on_host).ok()?;
    let rel = if rest.as_os_str().is_empty() {
        CString::new(".").ok()?
    } else {
        CString::new(rest.as_os_str().as_bytes()).ok()?
    };
    // struct open_how: flags, mode, resolve.
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    const RESOLVE_IN_ROOT: u64 = 0x10;
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT,
    };
    use std::os::fd::AsRawFd;
    // SAFETY: a live directory fd, a NUL-terminated relative path and a live open_how of the
    // size given; the result is a fresh fd or an error.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            rel.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: openat2 returned a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    std::fs::File::from(fd).metadata().ok()
}

fn executable(m: &std::fs::Metadata) -> bool {
    m.is_file() && m.mode() & 0o111 != 0
}

/// The guest path of the program `name`, for a process with `env` in `cwd`, looked up in
/// `shares`.
pub fn find(
    name: &str,
    env: &[String],
    cwd: &Path,
    shares: &[SharedDir],
) -> Result<PathBuf, ConfigError> {
    if name.contains('/') {
        let guest = normalize(&cwd.join(name));
        let not = |reason: &str| ConfigError::ProgramNotExecutable {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        return match stat_in_shares(&guest, shares) {
            None => Err(ConfigError::ProgramNotFound {
                name: name.to_string(),
                looked: format!("no {} there", guest.display()),
            }),
            Some(m) if m.is_dir() => Err(not("is a directory: give a program")),
            Some(m) if !executable(&m) => Err(not(
                "permission denied: not an executable file (chmod +x it, or run it through its interpreter)",
            )),
            Some(_) => Ok(guest),
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let guest = normalize(&cwd.join(dir).join(name));
        if stat_in_shares(&guest, shares).is_some_and(|m| executable(&m)) {
            return Ok(guest);
        }
    }
    Err(ConfigError::ProgramNotFound {
        name: name.to_string(),
        looked: format!("PATH={path}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(host: &Path, guest: &str) -> SharedDir {
        SharedDir {
            path_on_host: host.to_path_buf(),
            guest_path: guest.into(),
            ..Default::default()
        }
    }

    #[test]
    fn paths_are_normalized_lexically() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), Path::new("/a/c"));
        assert_eq!(normalize(Path::new("/../../x")), Path::new("/x"));
    }

    #[test]
    fn programs_are_found_as_the_guest_will_find_them() {
        let dir = std::env::temp_dir().join(format!("ember-find-{}", std::process::id()));
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("work")).unwrap();
        let tool = root.join("bin/tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(root.join("work/notes.txt"), "x").unwrap();
        // An absolute link inside the share points inside the share, as in the guest.
        std::os::unix::fs::symlink("/bin/tool", root.join("bin/alias")).unwrap();
        let shares = [share(&root, "/")];
        let env = ["PATH=/usr/bin:/bin".to_string()];
        let cwd = Path::new("/work");
        assert_eq!(
            find("tool", &env, cwd, &shares).unwrap(),
            Path::new("/bin/tool")
        );
        assert_eq!(
            find("alias", &env, cwd, &shares).unwrap(),
            Path::new("/bin/alias")
        );
        assert_eq!(
            find("../bin/tool", &env, cwd, &shares).unwrap(),
            Path::new("/bin/tool")
        );
        let e = find("nope", &env, cwd, &shares).unwrap_err().to_string();
        assert!(
            e.starts_with("nope: command not found") && e.contains("PATH=/usr/bin:/bin"),
            "{e}"
        );
        let e = find("./notes.txt", &env, cwd, &shares)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an executable file"), "{e}");
        let e = find("/bin", &env, cwd, &shares).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        // Not on the host's /bin: in the share's.
        assert!(find("sh", &env, cwd, &shares).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
