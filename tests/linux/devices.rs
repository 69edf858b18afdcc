//! A Linux guest's disk, network and host channel (hardware tier): its root filesystem on a
//! virtio-blk ext4 image made here without a network (`mkfs.ext4 -d` from a busybox tree),
//! written and found again after a reboot; its eth0 reaching the host over a TAP in a network
//! namespace made here, both ways; and a stream each way over vsock, with Firecracker's host
//! convention. On a PVM host they say SKIP: the guest's userspace does not run there (the
//! devices themselves are proven there by tests/devices.rs).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Instant;

use super::*;

/// `ember run` of the project kernel `k` with `img` as its root on virtio-blk, then `extra`.
fn on_rootfs<'a>(k: &'a str, img: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--kernel",
        k,
        "--no-initrd",
        "--rootfs",
        img.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    args
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-linux-devices-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Whether the test can run: hardware tier, project kernel, busybox and mkfs.ext4.
fn ready(test: &str) -> Option<String> {
    let k = kernel_or_skip(test, "vmlinux")?;
    if !hardware(test) {
        skip(test, "Linux userspace does not run on a PVM-based /dev/kvm");
        return None;
    }
    for tool in ["/bin/busybox", "/sbin/mkfs.ext4"] {
        if !Path::new(tool).exists() {
            skip(test, &format!("needs {tool} (busybox-static, e2fsprogs)"));
            return None;
        }
    }
    Some(k)
}

/// An ext4 image holding busybox, the vsock tool and `init` as /sbin/init.
fn rootfs(name: &str, init: &str) -> PathBuf {
    let tree = scratch(&format!("{name}.d"));
    let _ = std::fs::remove_dir_all(&tree);
    for d in ["bin", "sbin", "dev", "proc", "sys", "tmp", "data"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).unwrap();
    std::fs::copy(env!("EMBER_GUEST_INIT"), tree.join("bin/vsock")).unwrap();
    let script = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexport PATH=/bin\nmount -t proc proc /proc\n{init}\nsync\nreboot -f\n"
    );
    let init_path = tree.join("sbin/init");
    std::fs::write(&init_path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init_path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let img = scratch(&format!("{name}.ext4"));
    let _ = std::fs::remove_file(&img);
    let o = Command::new("/sbin/mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg("16M")
        .output()
        .unwrap();
    assert!(o.status.success(), "mkfs.ext4: {o:?}");
    img
}

/// Reads ember's stdout line by line into `seen` until a line containing `needle`; a failure
/// shows what ember said on stderr (its file `stderr`).
fn read_until(out: &mut impl BufRead, seen: &mut String, needle: &str, stderr: &Path) {
    let start = Instant::now();
    let said = || std::fs::read_to_string(stderr).unwrap_or_default();
    while !seen.contains(needle) {
        assert!(
            start.elapsed() < HW_LIMIT,
            "{needle:?} never came: {seen}\nember: {}",
            said()
        );
        let mut line = String::new();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            panic!(
                "the guest ended before {needle:?}: {seen}\nember: {}",
                said()
            );
        }
        seen.push_str(&line);
    }
}

/// Starts ember as `cmd` with no input, its stdout piped back line by line and its stderr in
/// a file (named after `name`) that a failure can show.
fn start_ember(mut cmd: Command, name: &str) -> (Child, BufReader<ChildStdout>, PathBuf) {
    let log = scratch(&format!("{name}.stderr"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out, log)
}

#[test]
fn rootfs_on_virtio_blk_keeps_what_the_guest_wrote() {
    let test = "rootfs_on_virtio_blk_keeps_what_the_guest_wrote";
    let Some(k) = ready(test) else { return };
    let img = rootfs(
        "persist",
        "if [ -f /data/marker ]; then echo \"found: $(cat /data/marker)\"; \
         else echo 'first boot'; echo written-by-the-guest > /data/marker; fi",
    );
    let args = on_rootfs(&k, &img, &[]);
    let first = run(&args, HW_LIMIT);
    assert_eq!(first.code, Some(0), "{first:?}");
    assert!(first.stdout.contains("first boot"), "{first:?}");
    assert!(first.stdout.contains("EXT4-fs (vda)"), "{first:?}");
    let second = run(&args, HW_LIMIT);
    assert_eq!(second.code, Some(0), "{second:?}");
    assert!(
        second.stdout.contains("found: written-by-the-guest"),
        "{second:?}"
    );
}

/// Runs `args` in network namespace `ns`.
fn in_ns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

fn sh(c: &mut Command) {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{c:?}: {o:?}");
}

#[test]
fn eth0_reaches_the_host_over_a_tap_both_ways() {
    let test = "eth0_reaches_the_host_over_a_tap_both_ways";
    let Some(k) = ready(test) else { return };
    if !Path::new("/sbin/ip").exists() && !Path::new("/bin/ip").exists() {
        skip(test, "needs iproute2");
        return;
    }
    let ns = format!("ember-t{}", std::process::id());
    sh(Command::new("ip").args(["netns", "add", &ns]));
    struct DropNs(String);
    impl Drop for DropNs {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _cleanup = DropNs(ns.clone());
    sh(&mut in_ns(
        &ns,
        &["ip", "tuntap", "add", "tap0", "mode", "tap"],
    ));
    sh(&mut in_ns(
        &ns,
        &["ip", "addr", "add", "10.0.2.1/24", "dev", "tap0"],
    ));
    sh(&mut in_ns(&ns, &["ip", "link", "set", "tap0", "up"]));
    // One echo each way: the project kernel has no POSIX timers, so busybox ping's alarm()
    // (its interval and -W) does nothing there, and a second echo would never be sent.
    let img = rootfs(
        "net",
        "ip link set eth0 up\nip addr add 10.0.2.2/24 dev eth0\n\
         ping -c 1 10.0.2.1 && echo guest-ping-ok\n\
         echo ready-for-host\nnc -l -p 6000 > /tmp/got\necho \"from host: $(cat /tmp/got)\"",
    );
    let (child, mut out, log) = start_ember(
        in_ns(
            &ns,
            &[
                &[env!("CARGO_BIN_EXE_ember")][..],
                &on_rootfs(
                    &k,
                    &img,
                    &[
                        "--net",
                        "tap=tap0,mac=02:00:00:00:00:02",
                        // Ends a silent guest, so the reads below see the end instead of
                        // blocking.
                        "--timeout",
                        "180",
                    ],
                ),
            ]
            .concat(),
        ),
        "net",
    );
    let mut seen = String::new();
    read_until(&mut out, &mut seen, "ready-for-host", &log);
    assert!(seen.contains("guest-ping-ok"), "{seen}");
    // The host pings the guest, then hands it a line over TCP.
    sh(&mut in_ns(
        &ns,
        &["busybox", "ping", "-c", "2", "-W", "10", "10.0.2.2"],
    ));
    let start = Instant::now();
    loop {
        let mut nc = in_ns(&ns, &["busybox", "nc", "10.0.2.2", "6000"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let _ = nc.stdin.take().unwrap().write_all(b"hello-from-the-host\n");
        if nc.wait().unwrap().success() {
            break;
        }
        assert!(
            start.elapsed() < HW_LIMIT,
            "the guest's listener never took a connection"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    read_until(&mut out, &mut seen, "from host:", &log);
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    seen.push_str(&rest);
    let o = wait(child, HW_LIMIT);
    assert!(seen.contains("from host: hello-from-the-host"), "{seen}");
    assert_eq!(o.code, Some(0), "{seen} {o:?}");
}

#[test]
fn vsock_carries_a_stream_each_way() {
    let test = "vsock_carries_a_stream_each_way";
    let Some(k) = ready(test) else { return };
    let uds = scratch("v.sock");
    let _ = std::fs::remove_file(&uds);
    // Guest to host: the host listens at <uds>_5000, as with Firecracker.
    let host_side = PathBuf::from(format!("{}_5000", uds.display()));
    let _ = std::fs::remove_file(&host_side);
    let listener = UnixListener::bind(&host_side).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        s.write_all(b"host-reply").unwrap();
        got
    });
    let img = rootfs(
        "vsock",
        "vsock connect 2 5000 guest-to-host\nvsock listen 6000 guest-reply",
    );
    let mut cmd = ember();
    let vsock = format!("cid=3,uds={}", uds.display());
    cmd.args(on_rootfs(
        &k,
        &img,
        &[
            "--vsock",
            &vsock,
            "--timeout",
            "180",
            "--log-level",
            "debug",
        ],
    ));
    let (child, mut out, log) = start_ember(cmd, "vsock");
    let mut seen = String::new();
    read_until(&mut out, &mut seen, "vsock listening on 6000", &log);
    assert!(seen.contains("vsock reply: host-reply"), "{seen}");
    assert_eq!(server.join().unwrap(), "guest-to-host");
    // Host to guest: CONNECT <port>, OK <port>, then the stream.
    let mut s = UnixStream::connect(&uds).unwrap();
    s.write_all(b"CONNECT 6000\n").unwrap();
    let mut ok = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut ok)
        .unwrap();
    assert!(ok.starts_with("OK "), "{ok:?}");
    s.write_all(b"host-to-guest").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    seen.push_str(&rest);
    let o = wait(child, HW_LIMIT);
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(reply, "guest-reply", "{seen}\nember: {said}");
    assert!(seen.contains("vsock got: host-to-guest"), "{seen}");
    assert_eq!(o.code, Some(0), "{seen} {o:?}");
    assert!(!uds.exists(), "ember leaves its socket file behind");
}
