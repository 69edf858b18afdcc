//! A program run (`ember run -- PROG`): /ember/run says what to do (ember's src/command/spec.rs
//! writes it). The init loads the kernel modules it was given, mounts the shared root
//! (virtio-fs, read-only) under an in-memory overlay and the writable directories on top,
//! the guest's own /proc, /sys, /dev, /tmp and /run, moves into that root, connects the
//! channel to ember (vsock, CID 2) and runs the program there as the user it was told, its
//! stdio relayed over the channel as frames (src/command/frames.rs): stdout and stderr apart,
//! or one terminal (a pty) for an interactive program. When the program ends it syncs, sends
//! the exit status and waits for ember to stop the VM.
//!
//! A step that fails says so on the console, `ember-init: failed (KIND): REASON` (ember reads
//! that line), and over the channel when it is up; a missing driver is named by its kernel
//! option.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const SPEC: &str = "/ember/run";
/// Frame types (src/command/frames.rs).
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STARTED: u8 = 3;
const EXIT: u8 = 4;
const FAILED: u8 = 5;
const STDIN: u8 = 16;
const STDIN_EOF: u8 = 17;
const WINSIZE: u8 = 18;
const FAILED_DRIVER: u8 = 1;
const FAILED_MOUNT: u8 = 2;
const FAILED_START: u8 = 3;
const FAILED_SETUP: u8 = 4;
const MAX_PAYLOAD: usize = 64 << 10;
/// The host's CID.
const HOST_CID: u32 = 2;
/// After the program has exited, how long output still trickling in is waited for (a
/// background job may keep the pipes open forever).
const DRAIN_QUIET_MS: i32 = 100;

/// What /ember/run says.
#[derive(Default)]
struct Spec {
    args: Vec<String>,
    program: String,
    env: Vec<String>,
    cwd: String,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    terminal: bool,
    mounts: Vec<(String, String, bool)>,
    modules: Vec<String>,
    port: u32,
}

fn parse(bytes: &[u8]) -> Option<Spec> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut it = text.split_terminator('\0');
    if it.next()? != "ember-run/1" {
        return None;
    }
    let mut s = Spec::default();
    while let Some(key) = it.next() {
        let mut v = || it.next().map(str::to_string);
        match key {
            "program" => s.program = v()?,
            "arg" => s.args.push(v()?),
            "env" => s.env.push(v()?),
            "cwd" => s.cwd = v()?,
            "uid" => s.uid = v()?.parse().ok()?,
            "gid" => s.gid = v()?.parse().ok()?,
            "group" => s.groups.push(v()?.parse().ok()?),
            "terminal" => s.terminal = v()? == "1",
            "mount" => {
                let (tag, path, mode) = (v()?, v()?, v()?);
                s.mounts.push((tag, path, mode == "rw"));
            }
            "module" => s.modules.push(v()?),
            "port" => s.port = v()?.parse().ok()?,
            _ => return None,
        }
    }
    Some(s)
}

/// A step that failed: its kind (a FAILED_* value) and the reason.
struct Failure(u8, String);

fn kind_name(kind: u8) -> &'static str {
    match kind {
        FAILED_DRIVER => "missing-driver",
        FAILED_MOUNT => "mount",
        FAILED_START => "start",
        _ => "setup",
    }
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

fn filesystems() -> String {
    std::fs::read_to_string("/proc/filesystems").unwrap_or_default()
}

fn has_fs(name: &str) -> bool {
    filesystems()
        .lines()
        .any(|l| l.split_whitespace().last() == Some(name))
}

/// Names the option a failed virtio-fs mount points at.
fn virtiofs_missing() -> Failure {
    let virtio = std::fs::read_dir("/sys/bus/virtio/devices")
        .map(|d| d.count())
        .unwrap_or(0);
    let why = if virtio == 0 {
        "CONFIG_VIRTIO_MMIO (with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES): no virtio device was found"
    } else if !has_fs("fuse") {
        "CONFIG_FUSE_FS: the kernel knows no FUSE file system"
    } else {
        "CONFIG_VIRTIO_FS: the kernel knows no virtiofs file system"
    };
    Failure(FAILED_DRIVER, why.into())
}

fn mount(src: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> std::io::Result<()> {
    let _ = std::fs::create_dir_all(target);
    let (s, t, f, d) = (cstr(src), cstr(target), cstr(fstype), cstr(data));
    let data = if data.is_empty() {
        std::ptr::null()
    } else {
        d.as_ptr().cast()
    };
    // SAFETY: NUL-terminated strings that outlive the call.
    if unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, data) } != 0 {
        return Err(errno());
    }
    Ok(())
}

/// Loads the modules in order; `virtio_mmio` gets the devices from the command line (the
/// kernel hands `virtio_mmio.device=` to the module only when it is built in).
fn load_modules(modules: &[String]) -> Result<(), Failure> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let devices: Vec<&str> = cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("virtio_mmio."))
        .collect();
    for m in modules {
        let file = std::fs::File::open(m)
            .map_err(|e| Failure(FAILED_SETUP, format!("cannot open {m}: {e}")))?;
        let params = if m.ends_with("-virtio_mmio.ko") {
            devices.join(" ")
        } else {
            String::new()
        };
        let params = cstr(&params);
        // SAFETY: finit_module with a live fd and a NUL-terminated parameter string.
        let rc = unsafe {
            libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0)
        };
        if rc != 0 {
            let e = errno();
            // Already there (built in, or loaded as another's dependency): fine.
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(Failure(FAILED_SETUP, format!("cannot load {m}: {e}")));
            }
        }
    }
    Ok(())
}

/// Where the guest mounts fresh, empty file systems of its own over the root's directories.
const FRESH: [&str; 3] = ["/tmp", "/run", "/dev/shm"];

/// Whether `path` is `dir` or lies under it.
fn within(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Mounts the shares and the guest's own file systems under /ember/root, then moves there.
fn set_up_root(spec: &Spec) -> Result<(), Failure> {
    let Some((root_tag, _, root_rw)) = spec.mounts.first() else {
        return Err(Failure(FAILED_SETUP, "no root share in /ember/run".into()));
    };
    let fail_mount = |what: &str, e: std::io::Error| {
        if e.raw_os_error() == Some(libc::ENODEV) || e.raw_os_error() == Some(libc::ENOENT) {
            virtiofs_missing()
        } else {
            Failure(FAILED_MOUNT, format!("cannot mount {what}: {e}"))
        }
    };
    let root = "/ember/root";
    if *root_rw {
        mount(root_tag, root, "virtiofs", 0, "").map_err(|e| fail_mount("the root", e))?;
    } else {
        mount(root_tag, "/ember/lower", "virtiofs", libc::MS_RDONLY, "")
            .map_err(|e| fail_mount("the root", e))?;
        // Writes outside the writable directories land in memory and vanish with the VM.
        mount("tmpfs", "/ember/rw", "tmpfs", 0, "mode=755").map_err(|e| {
            Failure(FAILED_MOUNT, format!("cannot mount the overlay's tmpfs: {e}"))
        })?;
        let _ = std::fs::create_dir_all("/ember/rw/upper");
        let _ = std::fs::create_dir_all("/ember/rw/work");
        mount(
            "overlay",
            root,
            "overlay",
            0,
            "lowerdir=/ember/lower,upperdir=/ember/rw/upper,workdir=/ember/rw/work",
        )
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ENODEV) {
                Failure(
                    FAILED_DRIVER,
                    "CONFIG_OVERLAY_FS: the kernel knows no overlay file system".into(),
                )
            } else {
                Failure(FAILED_MOUNT, format!("cannot mount the overlay: {e}"))
            }
        })?;
    }
    // The working directory may lie where the guest gets fresh file systems of its own (a
    // checkout under the host's /tmp): held now, as the root shows it, and put back at its
    // path once they are mounted.
    let held = "/ember/cwd";
    let cwd_in_root = format!("{root}{}", spec.cwd);
    let hold = FRESH.iter().any(|f| within(&spec.cwd, f))
        && std::path::Path::new(&cwd_in_root).is_dir()
        && mount(&cwd_in_root, held, "", libc::MS_BIND | libc::MS_REC, "").is_ok();
    let own: [(&str, &str, &str, libc::c_ulong, &str); 7] = [
        ("proc", "/proc", "proc", libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, ""),
        ("sysfs", "/sys", "sysfs", libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, ""),
        ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, ""),
        ("devpts", "/dev/pts", "devpts", libc::MS_NOSUID | libc::MS_NOEXEC, "ptmxmode=666,mode=620"),
        ("tmpfs", "/dev/shm", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, "mode=1777"),
        ("tmpfs", "/tmp", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, "mode=1777"),
        ("tmpfs", "/run", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, "mode=755"),
    ];
    for (src, at, fstype, flags, data) in own {
        mount(src, &format!("{root}{at}"), fstype, flags, data)
            .map_err(|e| Failure(FAILED_MOUNT, format!("cannot mount the guest's {at}: {e}")))?;
    }
    if hold {
        mount(held, &cwd_in_root, "", libc::MS_BIND | libc::MS_REC, "").map_err(|e| {
            Failure(FAILED_MOUNT, format!("cannot put the working directory {} back: {e}", spec.cwd))
        })?;
    }
    // The shares after the guest's own file systems, so that one under /tmp or /run is seen.
    for (tag, path, rw) in &spec.mounts[1..] {
        let target = format!("{root}{path}");
        let flags = if *rw { 0 } else { libc::MS_RDONLY };
        mount(tag, &target, "virtiofs", flags, "").map_err(|e| fail_mount(path, e))?;
    }
    // switch_root: the initramfs cannot be pivoted away from; move the new root over it.
    let (r, dot, slash) = (cstr(root), cstr("."), cstr("/"));
    // SAFETY: NUL-terminated paths; the calls only change this process's root and directory.
    let moved = unsafe {
        libc::chdir(r.as_ptr()) == 0
            && libc::mount(dot.as_ptr(), slash.as_ptr(), std::ptr::null(), libc::MS_MOVE, std::ptr::null()) == 0
            && libc::chroot(dot.as_ptr()) == 0
            && libc::chdir(slash.as_ptr()) == 0
    };
    if !moved {
        return Err(Failure(FAILED_SETUP, format!("cannot move into the root: {}", errno())));
    }
    Ok(())
}

/// The channel to ember.
fn connect(port: u32) -> Result<OwnedFd, Failure> {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Failure(
            FAILED_DRIVER,
            format!("CONFIG_VSOCKETS: no vsock sockets ({})", errno()),
        ));
    }
    // SAFETY: a fresh fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = HOST_CID;
    addr.svm_port = port;
    // SAFETY: a live sockaddr_vm of the size given.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            &addr as *const libc::sockaddr_vm as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = errno();
        let reason = match e.raw_os_error() {
            Some(libc::ENODEV) | Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => format!(
                "CONFIG_VIRTIO_VSOCKETS: no virtio vsock transport to reach ember ({e})"
            ),
            _ => format!("cannot reach ember over vsock ({e})"),
        };
        let kind = if reason.starts_with("CONFIG") {
            FAILED_DRIVER
        } else {
            FAILED_SETUP
        };
        return Err(Failure(kind, reason));
    }
    Ok(sock)
}

fn write_all(fd: RawFd, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        // SAFETY: writing from a live buffer.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            if errno().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return false;
        }
        buf = &buf[n as usize..];
    }
    true
}

fn send(chan: RawFd, kind: u8, payload: &[u8]) -> bool {
    let mut f = Vec::with_capacity(5 + payload.len());
    f.push(kind);
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(payload);
    write_all(chan, &f)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Failure> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Failure(FAILED_SETUP, format!("pipe: {}", errno())));
    }
    // SAFETY: fresh fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A pty: (master, the slave's path).
fn pty() -> Result<(OwnedFd, CString), Failure> {
    // SAFETY: plain calls on the master fd they return; ptsname_r fills a live buffer.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if m < 0 || libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            return Err(Failure(FAILED_SETUP, format!("no pty: {}", errno())));
        }
        let mut name = [0 as libc::c_char; 64];
        if libc::ptsname_r(m, name.as_mut_ptr(), name.len()) != 0 {
            return Err(Failure(FAILED_SETUP, format!("no pty name: {}", errno())));
        }
        Ok((
            OwnedFd::from_raw_fd(m),
            CStr::from_ptr(name.as_ptr()).to_owned(),
        ))
    }
}

fn set_winsize(fd: RawFd, payload: &[u8]) {
    if let [r0, r1, c0, c1, ..] = *payload {
        let ws = libc::winsize {
            ws_row: u16::from_le_bytes([r0, r1]),
            ws_col: u16::from_le_bytes([c0, c1]),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: a pty master and a live winsize.
        unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
    }
}

/// The program's side of its stdio, in the child.
enum ChildIo {
    Pipes { stdin: RawFd, stdout: RawFd, stderr: RawFd },
    Terminal(CString),
}

/// The step of [`exec_child`] that failed, as its report says.
const STEP_USER: u8 = 0;
const STEP_CWD: u8 = 1;
const STEP_EXEC: u8 = 2;

/// In the child: becomes the program (never returns); on failure writes errno and the step
/// that failed to `report`.
fn exec_child(spec: &Spec, io: &ChildIo, report: RawFd) -> ! {
    let args: Vec<CString> = spec.args.iter().map(|a| cstr(a)).collect();
    let env: Vec<CString> = spec.env.iter().map(|e| cstr(e)).collect();
    let program = cstr(&spec.program);
    let cwd = cstr(&spec.cwd);
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let groups: Vec<libc::gid_t> = spec.groups.clone();
    // SAFETY: between fork and exec, only async-signal-safe calls on data prepared before.
    unsafe {
        libc::setsid();
        match io {
            ChildIo::Pipes { stdin, stdout, stderr } => {
                libc::dup2(*stdin, 0);
                libc::dup2(*stdout, 1);
                libc::dup2(*stderr, 2);
            }
            ChildIo::Terminal(slave) => {
                let s = libc::open(slave.as_ptr(), libc::O_RDWR);
                if s >= 0 {
                    libc::ioctl(s, libc::TIOCSCTTY, 0);
                    libc::dup2(s, 0);
                    libc::dup2(s, 1);
                    libc::dup2(s, 2);
                    if s > 2 {
                        libc::close(s);
                    }
                }
            }
        }
        let step = if !(libc::setgroups(groups.len(), groups.as_ptr()) == 0
            && libc::setgid(spec.gid) == 0
            && libc::setuid(spec.uid) == 0)
        {
            STEP_USER
        } else if libc::chdir(cwd.as_ptr()) != 0 {
            STEP_CWD
        } else {
            libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
            STEP_EXEC
        };
        let e = *libc::__errno_location();
        let mut bytes = [0u8; 5];
        bytes[..4].copy_from_slice(&e.to_le_bytes());
        bytes[4] = step;
        libc::write(report, bytes.as_ptr().cast(), 5);
        libc::_exit(127);
    }
}

/// The relay: the program's output to the channel, the channel's input to the program, until
/// the program has exited and its output has drained. Returns its wait status.
fn relay(chan: RawFd, pid: libc::pid_t, outputs: Vec<(RawFd, u8)>, stdin: Option<RawFd>, terminal: Option<RawFd>) -> i32 {
    let mut outputs = outputs;
    let mut stdin = stdin;
    let mut status = None;
    let mut inbuf: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; MAX_PAYLOAD];
    let mut chan_open = true;
    loop {
        if status.is_none() {
            let mut st = 0;
            // SAFETY: waiting for our own child without blocking.
            if unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) } == pid {
                status = Some(st);
            }
        }
        if status.is_some() && outputs.is_empty() {
            break;
        }
        let mut pfds: Vec<libc::pollfd> = outputs
            .iter()
            .map(|&(fd, _)| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
        if chan_open {
            pfds.push(libc::pollfd { fd: chan, events: libc::POLLIN, revents: 0 });
        }
        // While the program runs, wake up now and then to reap it; once it has exited, a
        // quiet spell ends the drain.
        let timeout = if status.is_some() { DRAIN_QUIET_MS } else { 50 };
        // SAFETY: a live array of as many pollfds as passed.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
        if n == 0 && status.is_some() {
            break;
        }
        let mut closed = Vec::new();
        for (i, p) in pfds.iter().enumerate() {
            if p.revents == 0 {
                continue;
            }
            if i < outputs.len() {
                let (fd, kind) = outputs[i];
                // SAFETY: reading into a live buffer.
                let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if r > 0 {
                    send(chan, kind, &buf[..r as usize]);
                } else if r == 0 || errno().raw_os_error() != Some(libc::EINTR) {
                    // EOF (or EIO: a pty whose last slave closed).
                    closed.push(fd);
                }
                continue;
            }
            // SAFETY: reading into a live buffer.
            let r = unsafe { libc::read(chan, buf.as_mut_ptr().cast(), buf.len()) };
            if r <= 0 {
                chan_open = false;
                continue;
            }
            inbuf.extend_from_slice(&buf[..r as usize]);
            while inbuf.len() >= 5 {
                let len = u32::from_le_bytes([inbuf[1], inbuf[2], inbuf[3], inbuf[4]]) as usize;
                if inbuf.len() < 5 + len {
                    break;
                }
                let payload = inbuf[5..5 + len].to_vec();
                match inbuf[0] {
                    STDIN => {
                        if let Some(fd) = stdin.or(terminal) {
                            write_all(fd, &payload);
                        }
                    }
                    STDIN_EOF => {
                        // A terminal has no end of input; a pipe's is closed.
                        if let Some(fd) = stdin.take() {
                            // SAFETY: closing our end of the program's stdin pipe.
                            unsafe { libc::close(fd) };
                        }
                    }
                    WINSIZE => {
                        if let Some(fd) = terminal {
                            set_winsize(fd, &payload);
                        }
                    }
                    _ => {}
                }
                inbuf.drain(..5 + len);
            }
        }
        outputs.retain(|(fd, _)| !closed.contains(fd));
    }
    match status {
        Some(s) => s,
        None => {
            let mut st = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut st, 0) };
            st
        }
    }
}

/// Runs the program; never returns.
pub fn main() -> ! {
    let spec = std::fs::read(SPEC).ok().and_then(|b| parse(&b));
    let Some(spec) = spec else {
        fail(None, Failure(FAILED_SETUP, format!("{SPEC} is missing or unreadable")));
    };
    if let Err(f) = load_modules(&spec.modules) {
        fail(None, f);
    }
    if let Err(f) = set_up_root(&spec) {
        fail(None, f);
    }
    let chan = match connect(spec.port) {
        Ok(c) => c,
        Err(f) => fail(None, f),
    };
    let c = chan.as_raw_fd();
    let result = start(&spec, c);
    let (pid, outputs, stdin, terminal, _keep) = match result {
        Ok(x) => x,
        Err(f) => fail(Some(c), f),
    };
    let status = relay(c, pid, outputs, stdin, terminal);
    let (kind, code) = if libc::WIFEXITED(status) {
        (0u8, libc::WEXITSTATUS(status) as u8)
    } else {
        (1u8, libc::WTERMSIG(status) as u8)
    };
    // The program's writes to writable directories are on the host already (no writeback
    // cache); this flushes what it left in memory maps.
    // SAFETY: plain sync.
    unsafe { libc::sync() };
    crate::outb(crate::STATUS_PORT, if kind == 0 { code } else { 128u8.wrapping_add(code) });
    send(c, EXIT, &[kind, code]);
    finish()
}

type Started = (libc::pid_t, Vec<(RawFd, u8)>, Option<RawFd>, Option<RawFd>, Vec<OwnedFd>);

/// Forks the program with its stdio; returns its pid, the fds to relay from (with their frame
/// type), the pipe to its stdin, the pty master, and the fds to keep open.
fn start(spec: &Spec, chan: RawFd) -> Result<Started, Failure> {
    let (report_r, report_w) = pipe()?;
    // Ours, kept open while the program runs; the child's, closed here once it has them.
    let mut keep = Vec::new();
    let mut child_ends = Vec::new();
    let (io, outputs, stdin, terminal) = if spec.terminal {
        let (master, slave) = pty()?;
        let m = master.as_raw_fd();
        keep.push(master);
        (ChildIo::Terminal(slave), vec![(m, STDOUT)], None, Some(m))
    } else {
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let io = ChildIo::Pipes {
            stdin: in_r.as_raw_fd(),
            stdout: out_w.as_raw_fd(),
            stderr: err_w.as_raw_fd(),
        };
        let outputs = vec![(out_r.as_raw_fd(), STDOUT), (err_r.as_raw_fd(), STDERR)];
        // The stdin pipe's end is closed by the relay at the input's end: not kept here.
        let stdin = std::os::fd::IntoRawFd::into_raw_fd(in_w);
        keep.push(out_r);
        keep.push(err_r);
        child_ends.extend([in_r, out_w, err_w]);
        (io, outputs, Some(stdin), None)
    };
    // SAFETY: fork; the child only runs exec_child.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Failure(FAILED_START, format!("fork: {}", errno())));
    }
    if pid == 0 {
        exec_child(spec, &io, report_w.as_raw_fd());
    }
    drop(io);
    drop(child_ends);
    drop(report_w);
    let mut e = [0u8; 5];
    // SAFETY: reading the child's report: EOF (exec closed it) means the program runs.
    let n = unsafe { libc::read(report_r.as_raw_fd(), e.as_mut_ptr().cast(), 5) };
    if n == 5 {
        let err = std::io::Error::from_raw_os_error(i32::from_le_bytes([e[0], e[1], e[2], e[3]]));
        let mut st = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        return Err(match e[4] {
            STEP_USER => Failure(
                FAILED_SETUP,
                format!("cannot become user {}:{}: {err}", spec.uid, spec.gid),
            ),
            STEP_CWD => Failure(
                FAILED_SETUP,
                format!("cannot enter the working directory {}: {err}", spec.cwd),
            ),
            _ => Failure(FAILED_START, err.to_string()),
        });
    }
    send(chan, STARTED, &[]);
    Ok((pid, outputs, stdin, terminal, keep))
}

/// Says why on the console (and the channel, if up), then waits for ember to stop the VM.
fn fail(chan: Option<RawFd>, f: Failure) -> ! {
    let Failure(kind, reason) = f;
    eprintln!("ember-init: failed ({}): {reason}", kind_name(kind));
    if let Some(c) = chan {
        let mut payload = vec![kind];
        payload.extend_from_slice(reason.as_bytes());
        send(c, FAILED, &payload);
    }
    finish()
}

/// ember stops the VM once it has everything; if it does not, reboot after a while.
fn finish() -> ! {
    std::thread::sleep(std::time::Duration::from_secs(10));
    // SAFETY: plain syscalls; PID 1 ends the machine.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
