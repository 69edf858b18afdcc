//! `ember run -- PROG [ARGS]`: the user's program in the VM, as vng and vmtest users type it.
//! The flags' words are vng's where vng has them (`--root`, `--rwdir`, `--rodir`, `--cwd`,
//! `--user`, `-v`): the configuration's `shares` and `process` from them, the program's
//! stdio from this process's, the guest kernel's log kept aside (shown with `-v`, its tail
//! when the guest never reaches the program), and the exit code from how the program ended.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ember::command::frames;
use ember::command::session::{CommandResult, ProcessIo};
use ember::config::{ConfigError, Origin, Process, SharedDir, User, VmConfig};

use super::{Failure, exit_code};

/// The flags that shape a program's VM.
#[derive(clap::Args, Default, Clone)]
pub struct ProcessArgs {
    /// The guest's root for the program: this directory (a container's rootfs, a debootstrap
    /// tree) instead of the host's /. Read-only either way; writes outside --rwdir go to an
    /// in-memory overlay and vanish with the VM.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// A host directory the program may change (repeatable): its changes are on the host
    /// when ember exits.
    #[arg(long, value_name = "DIR")]
    pub rwdir: Vec<PathBuf>,
    /// A host directory shared read-only at its own path (repeatable; useful with --root).
    #[arg(long, value_name = "DIR")]
    pub rodir: Vec<PathBuf>,
    /// The program's working directory in the guest [default: the current directory; / with
    /// --root].
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Who the program runs as: a user name of the guest's root, root, or UID[:GID]
    /// [default: you].
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Show the guest kernel's log on stderr (without it the kernel is quiet, and its log is
    /// shown only when the guest never reaches the program).
    #[arg(short, long)]
    pub verbose: bool,
    /// The guest kernel's modules (its package's /lib/modules/VERSION), for a kernel whose
    /// virtio-fs and vsock drivers are modules [default: /lib/modules/RELEASE if there].
    #[arg(long, value_name = "DIR")]
    pub modules: Option<PathBuf>,
}

impl ProcessArgs {
    /// The first flag given, if any (they need a program).
    pub fn first_given(&self) -> Option<&'static str> {
        [
            (self.root.is_some(), "--root"),
            (!self.rwdir.is_empty(), "--rwdir"),
            (!self.rodir.is_empty(), "--rodir"),
            (self.cwd.is_some(), "--cwd"),
            (self.user.is_some(), "--user"),
            (self.verbose, "--verbose"),
            (self.modules.is_some(), "--modules"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }
}

fn flag_err(flag: &'static str, value: &Path, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        input: format!("{flag} {}", ember::config::shown(value)),
        reason: reason.into(),
    }
}

/// A host directory given with `flag`, as an absolute path (it must exist and be one).
fn directory(flag: &'static str, dir: &Path) -> Result<PathBuf, ConfigError> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        flag_err(
            flag,
            dir,
            match e.kind() {
                std::io::ErrorKind::NotFound => "no such directory: check the path".into(),
                _ => format!("cannot reach it ({e})"),
            },
        )
    })?;
    if !meta.is_dir() {
        return Err(flag_err(flag, dir, "not a directory: pass a directory"));
    }
    std::fs::canonicalize(dir).map_err(|e| flag_err(flag, dir, format!("cannot resolve it ({e})")))
}

/// `--user`: `root`, a name from the root's /etc/passwd, or `UID[:GID]`.
fn user(spec: &str, root: &Path) -> Result<User, ConfigError> {
    let bad = |reason: String| ConfigError::Invalid {
        input: format!("--user {spec}"),
        reason,
    };
    if let Some((uid, gid)) = spec.split_once(':') {
        let n = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| bad("not UID:GID (two numbers)".into()))
        };
        return Ok(User {
            uid: n(uid)?,
            gid: n(gid)?,
            additional_gids: Vec::new(),
        });
    }
    if let Ok(uid) = spec.parse::<u32>() {
        return Ok(User {
            uid,
            gid: uid,
            additional_gids: Vec::new(),
        });
    }
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&spec) && f.len() > 3)
        .ok_or_else(|| {
            bad(format!(
                "no such user in {}: give a user name from it, root, or UID[:GID]",
                root.join("etc/passwd").display()
            ))
        })?;
    let (uid, gid) = (
        entry[2]
            .parse()
            .map_err(|_| bad("its passwd entry has no uid".into()))?,
        entry[3]
            .parse()
            .map_err(|_| bad("its passwd entry has no gid".into()))?,
    );
    let groups = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    let additional_gids = groups
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() > 3 && f[3].split(',').any(|m| m == spec))
        .filter_map(|f| f[2].parse().ok())
        .collect();
    Ok(User {
        uid,
        gid,
        additional_gids,
    })
}

/// Who this process runs as.
fn invoking_user() -> User {
    // SAFETY: getuid and getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut groups = vec![0 as libc::gid_t; 256];
    // SAFETY: a live buffer of as many gids as given.
    let n = unsafe { libc::getgroups(groups.len() as i32, groups.as_mut_ptr()) };
    groups.truncate(usize::try_from(n).unwrap_or(0));
    groups.retain(|&g| g != gid);
    User {
        uid,
        gid,
        additional_gids: groups,
    }
}

/// Adds the program `args` and the flags' shares to `config`.
pub fn configure(
    config: &mut VmConfig,
    flags: &ProcessArgs,
    args: &[String],
    terminal: bool,
) -> Result<(), ConfigError> {
    let root = match &flags.root {
        Some(r) => directory("--root", r)?,
        None => PathBuf::from("/"),
    };
    let origin = |flag: &'static str, p: &Path| Origin::Flag {
        flag,
        text: p.display().to_string(),
    };
    config.shares.insert(
        0,
        SharedDir {
            path_on_host: root.clone(),
            guest_path: "/".into(),
            writable: false,
            origin: match &flags.root {
                Some(r) => origin("--root", r),
                None => Origin::Config,
            },
        },
    );
    for (flag, dirs, writable) in [
        ("--rwdir", &flags.rwdir, true),
        ("--rodir", &flags.rodir, false),
    ] {
        for d in dirs {
            let host = directory(flag, d)?;
            config.shares.push(SharedDir {
                guest_path: host.clone(),
                path_on_host: host,
                writable,
                origin: origin(flag, d),
            });
        }
    }
    let cwd = match (&flags.cwd, &flags.root) {
        (Some(c), _) => ember::command::program::normalize(
            &std::env::current_dir()
                .unwrap_or_else(|_| "/".into())
                .join(c),
        ),
        (None, Some(_)) => PathBuf::from("/"),
        (None, None) => std::env::current_dir().map_err(|e| ConfigError::Invalid {
            input: "the current directory".into(),
            reason: format!(
                "cannot read it ({e}): run ember from a directory that exists, or pass --cwd"
            ),
        })?,
    };
    let env = std::env::vars_os()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_str()?, v.to_str()?)))
        .collect();
    let user = match &flags.user {
        Some(u) => user(u, &root)?,
        None => invoking_user(),
    };
    config.process = Some(Process {
        args: args.to_vec(),
        env,
        cwd,
        user,
        terminal,
        kernel_log: flags.verbose,
    });
    if let Some(m) = &flags.modules {
        config.boot_source.modules = Some(m.clone());
        config.sources.set_by("boot-source.modules", "--modules");
    }
    Ok(())
}

/// stdout or stderr for the program: a descriptor of ember's own that never blocks (a pipe or
/// a terminal opened again, non-blocking; anything else as it is).
pub fn output_fd(fd: RawFd) -> RawFd {
    super::stderr::nonblocking(fd)
}

/// The program's stdio, from this process's.
pub fn io(terminal: bool) -> ProcessIo {
    let winsize = terminal.then(|| {
        // SAFETY: winsize is plain data that TIOCGWINSZ fills.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: a terminal fd and a live winsize.
        let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
        if ok { (ws.ws_row, ws.ws_col) } else { (24, 80) }
    });
    ProcessIo {
        stdin: Some(libc::STDIN_FILENO),
        stdout: output_fd(libc::STDOUT_FILENO),
        stderr: output_fd(libc::STDERR_FILENO),
        escape: terminal,
        winsize,
    }
}

/// The guest kernel's console while a program runs: kept (its last [`TAIL`] bytes), and
/// shown on stderr with `-v`.
#[derive(Clone, Default)]
pub struct ConsoleTail {
    kept: Arc<Mutex<VecDeque<u8>>>,
    show: bool,
}

/// How much of the console is kept to explain a guest that never reached the program.
const TAIL: usize = 16 << 10;

impl ConsoleTail {
    /// A tail, shown live if `show`.
    pub fn new(show: bool) -> Self {
        Self {
            kept: Default::default(),
            show,
        }
    }

    /// The last lines kept.
    pub fn text(&self) -> String {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let bytes: Vec<u8> = kept.iter().copied().collect();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Write for ConsoleTail {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.show {
            super::stderr::write(buf);
        }
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.extend(buf);
        let over = kept.len().saturating_sub(TAIL);
        kept.drain(..over);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The exit code for a program's run: its own status, or a failure with its line.
pub fn exit_for(
    result: &CommandResult,
    console_failure: Option<&(String, String)>,
    program: &Path,
    tail: &ConsoleTail,
) -> Result<u8, Failure> {
    if let Some(e) = result.exit {
        return Ok(e.status());
    }
    let fail = |code, message: String| Err(Failure { code, message });
    let show_tail = || {
        let t = tail.text();
        if !t.trim().is_empty() {
            super::stderr::write(
                format!("ember: the guest's console, last lines:\n{t}\n").as_bytes(),
            );
        }
    };
    let failure = result.failure.clone().or_else(|| {
        console_failure.map(|(kind, text)| {
            let k = match kind.as_str() {
                "missing-driver" => frames::FAILED_DRIVER,
                "mount" => frames::FAILED_MOUNT,
                "start" => frames::FAILED_START,
                _ => frames::FAILED_SETUP,
            };
            (k, text.clone())
        })
    });
    match failure {
        Some((frames::FAILED_DRIVER, text)) => fail(
            exit_code::MISSING_DRIVER,
            format!(
                "the guest kernel lacks a driver the run needs: {text}; build it in (kernels/ember-run.config) or give its modules (--modules)"
            ),
        ),
        Some((frames::FAILED_START, text)) => fail(
            if text.contains("No such file") {
                exit_code::PROGRAM_NOT_FOUND
            } else {
                exit_code::PROGRAM_NOT_EXECUTABLE
            },
            format!(
                "{}: cannot start it in the guest: {text}",
                program.display()
            ),
        ),
        Some((_, text)) => {
            show_tail();
            fail(
                exit_code::GUEST_SETUP,
                format!("the guest could not set up the run: {text}"),
            )
        }
        None if result.started => fail(
            exit_code::NO_STATUS,
            format!(
                "the guest stopped before {} reported its exit status",
                program.display()
            ),
        ),
        None => {
            show_tail();
            fail(
                exit_code::NO_STATUS,
                format!(
                    "the guest stopped before {} started: its kernel did not bring ember's init up (the console's last lines are above; -v shows all of it)",
                    program.display()
                ),
            )
        }
    }
}
