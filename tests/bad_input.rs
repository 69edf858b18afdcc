//! Bad input gets one line on stderr naming the input, what is wrong and how to fix it, a
//! documented non-zero exit code, promptly, and never a panic.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Exit code for bad input (README "Exit codes").
const BAD_INPUT: i32 = 2;
/// Exit code for an unusable /dev/kvm.
const NO_KVM: i32 = 3;

fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Runs ember and checks the one-line error contract.
fn expect_error(args: &[&str], code: i32, needles: &[&str]) {
    let o = run(args, Duration::from_secs(30));
    assert_eq!(o.code, Some(code), "{args:?}: {o:?}");
    let lines: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| !l.contains("warning:"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: want exactly one error line: {o:?}"
    );
    assert!(lines[0].starts_with("ember: "), "{o:?}");
    for n in needles {
        assert!(
            lines[0].contains(n),
            "{args:?}: {n:?} missing from {:?}",
            lines[0]
        );
    }
    assert!(!o.stderr.contains("panicked"), "{o:?}");
    // A hang guard, not a benchmark: errors come before any guest runs.
    assert!(
        o.elapsed < Duration::from_secs(10),
        "{args:?} took {:?}",
        o.elapsed
    );
}

fn tiny() -> String {
    guest("hello64").display().to_string()
}

#[test]
fn missing_kernel() {
    expect_error(
        &["run", "--kernel", "/nonexistent/vmlinux"],
        BAD_INPUT,
        &["/nonexistent/vmlinux", "no such file"],
    );
}

#[test]
fn default_kernel_not_built() {
    let o = ember()
        .args(["run"])
        .env("EMBER_KERNEL", "/nonexistent/ember-vmlinux")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(BAD_INPUT));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("kernels/build.sh"), "{err}");
}

#[test]
fn kernel_is_a_directory() {
    expect_error(
        &["run", "--kernel", "/tmp"],
        BAD_INPUT,
        &["/tmp", "directory"],
    );
}

#[test]
fn kernel_is_empty() {
    let p = scratch("empty", b"");
    expect_error(
        &["run", "--kernel", p.to_str().unwrap()],
        BAD_INPUT,
        &["empty"],
    );
}

#[test]
fn kernel_is_random_bytes() {
    let bytes: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let p = scratch("random", &bytes);
    expect_error(
        &["run", "--kernel", p.to_str().unwrap()],
        BAD_INPUT,
        &["random", "not an x86_64 ELF vmlinux or bzImage"],
    );
}

#[test]
fn kernel_is_a_truncated_elf() {
    let whole = std::fs::read(guest("hello64")).unwrap();
    for len in [64usize, 100, 200] {
        let p = scratch(&format!("truncated{len}"), &whole[..len]);
        expect_error(
            &["run", "--kernel", p.to_str().unwrap(), "--no-initrd"],
            BAD_INPUT,
            &[&format!("truncated{len}")],
        );
    }
}

#[test]
fn kernel_is_a_32bit_elf() {
    let mut elf = std::fs::read(guest("hello64")).unwrap();
    elf[4] = 1; // ELFCLASS32
    let p = scratch("elf32", &elf);
    expect_error(
        &["run", "--kernel", p.to_str().unwrap()],
        BAD_INPUT,
        &["not a 64-bit x86"],
    );
}

#[test]
fn bzimage_without_64bit_entry() {
    // A boot sector with "HdrS": protocol 2.11 (before xloadflags), then 2.15 without
    // XLF_KERNEL_64.
    for (version, xloadflags) in [(0x020bu16, 0u16), (0x020f, 0x2)] {
        let mut img = vec![0u8; 0x4000];
        img[0x1f1] = 4; // setup_sects
        img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        img[0x211] = 1; // loadflags: LOADED_HIGH
        img[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        let p = scratch(&format!("bz{version:x}"), &img);
        expect_error(
            &["run", "--kernel", p.to_str().unwrap()],
            BAD_INPUT,
            &["without a 64-bit entry point"],
        );
    }
}

#[test]
fn bad_vcpu_counts() {
    expect_error(
        &["run", "--kernel", &tiny(), "--vcpus", "0"],
        BAD_INPUT,
        &["--vcpus 0"],
    );
    expect_error(
        &["run", "--kernel", &tiny(), "--vcpus", "100000"],
        BAD_INPUT,
        &["--vcpus 100000", "at most"],
    );
    // Past what ember supports (the 8-bit APIC ids), overcommitting or not.
    expect_error(
        &[
            "run",
            "--kernel",
            &tiny(),
            "--vcpus",
            "100000",
            "--overcommit-vcpus",
        ],
        BAD_INPUT,
        &["--vcpus 100000", "more than ember supports (254"],
    );
    // Not a number, or past u32: named, with the range.
    expect_error(
        &["run", "--kernel", &tiny(), "--vcpus", "99999999999"],
        BAD_INPUT,
        &["--vcpus", "99999999999", "from 1 to 254"],
    );
    let cpus = ember::config::host_cpus().expect("sched_getaffinity");
    let asked = (cpus + 1).to_string();
    expect_error(
        &["run", "--kernel", &tiny(), "--vcpus", &asked],
        BAD_INPUT,
        &[
            &format!("--vcpus {asked}"),
            &format!("{cpus} CPUs this host gives ember"),
            "--overcommit-vcpus",
        ],
    );
}

#[test]
fn bad_memory_sizes() {
    expect_error(
        &["run", "--kernel", &tiny(), "--mem-mib", "0"],
        BAD_INPUT,
        &["--mem-mib 0", "minimum"],
    );
    expect_error(
        &["run", "--kernel", &tiny(), "--mem-mib", "4"],
        BAD_INPUT,
        &["--mem-mib 4"],
    );
    expect_error(
        &["run", "--kernel", &tiny(), "--mem-mib", "100000000"],
        BAD_INPUT,
        &["--mem-mib 100000000", "host"],
    );
}

#[test]
fn cmdline_too_long() {
    let long = "x".repeat(3000);
    expect_error(
        &["run", "--kernel", &tiny(), "--cmdline", &long],
        BAD_INPUT,
        &["--cmdline", "2047"],
    );
}

#[test]
fn initrd_missing_or_too_big() {
    expect_error(
        &[
            "run",
            "--kernel",
            &tiny(),
            "--initrd",
            "/nonexistent/initrd",
        ],
        BAD_INPUT,
        &["/nonexistent/initrd"],
    );
    let big = scratch("big-initrd", &vec![0u8; 12 << 20]);
    expect_error(
        &[
            "run",
            "--kernel",
            &tiny(),
            "--initrd",
            big.to_str().unwrap(),
            "--mem-mib",
            "8",
        ],
        BAD_INPUT,
        &["big-initrd", "does not fit"],
    );
}

#[test]
fn exec_must_be_static() {
    expect_error(
        &["run", "--kernel", &tiny(), "--exec", "/bin/true"],
        BAD_INPUT,
        &["/bin/true", "dynamically linked", "static"],
    );
    let script = scratch("script.sh", b"#!/bin/sh\nexit 0\n");
    expect_error(
        &[
            "run",
            "--kernel",
            &tiny(),
            "--exec",
            script.to_str().unwrap(),
        ],
        BAD_INPUT,
        &["not an x86_64 ELF"],
    );
    // Without --exec, what follows `--` is a program to run from the host's files: found on
    // the host before anything boots, or not (127, as a shell says it).
    expect_error(
        &["run", "--kernel", &tiny(), "--", "no-such-program-ember"],
        127,
        &["no-such-program-ember: command not found", "PATH="],
    );
}

#[test]
fn usage_errors_name_the_flag() {
    // Syntax errors are clap's, cut to its one line that names the flag and the value.
    for (args, needle) in [
        (&["run", "--frobnicate"][..], "--frobnicate"),
        (&["run", "--vcpus", "abc"][..], "--vcpus"),
        (&["run", "--mem-mib", "-5"][..], "-5"),
        (&["run", "--log-level", "loud"][..], "loud"),
        (&["run", "--timeout", "5x"][..], "not a duration"),
        (&["frobnicate"][..], "frobnicate"),
    ] {
        expect_error(args, BAD_INPUT, &[needle, "ember --help"]);
    }
}

#[test]
fn no_dev_kvm() {
    // A private mount namespace with an empty /dev: no /dev/kvm at all.
    let ember = env!("CARGO_BIN_EXE_ember");
    let script = format!(
        "mount -t tmpfs none /dev && exec {ember} run --kernel {} --no-initrd",
        tiny()
    );
    let probe = Command::new("unshare").args(["--mount", "true"]).status();
    if !matches!(probe, Ok(s) if s.success()) {
        skip(
            "no_dev_kvm",
            "cannot make a mount namespace here (needs root and unshare)",
        );
        return;
    }
    let o = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(NO_KVM), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/dev/kvm does not exist"), "{err}");
}

#[test]
fn no_permission_on_dev_kvm_kernel_or_disk() {
    // As an unprivileged user, /dev/kvm (0600 root here) cannot be opened, and a root-only
    // kernel file cannot be read.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip(
            "no_permission_on_dev_kvm_kernel_or_disk",
            "needs root to switch to an unprivileged user",
        );
        return;
    }
    let mode = std::fs::metadata("/dev/kvm")
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7);
    if mode.unwrap_or(0) != 0 {
        skip(
            "no_permission_on_dev_kvm_kernel_or_disk",
            "/dev/kvm is open to every user on this host",
        );
        return;
    }
    let ember = env!("CARGO_BIN_EXE_ember");
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", ember])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // The kernel must be readable by nobody for the KVM check to be reached.
    let kernel = scratch("world-readable", &std::fs::read(guest("hello64")).unwrap());
    let dir = kernel.parent().unwrap();
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&kernel, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let o = as_nobody(&["run", "--kernel", kernel.to_str().unwrap(), "--no-initrd"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(NO_KVM), "{err}");
    assert!(err.contains("no permission to open /dev/kvm"), "{err}");

    let secret = scratch("root-only", b"\x7fELF");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let o = as_nobody(&["run", "--kernel", secret.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(BAD_INPUT), "{err}");
    assert!(err.contains("permission denied"), "{err}");

    // Disks are checked before /dev/kvm is opened: an unreadable one, and a read-only file
    // given as a writable disk.
    let kernel = kernel.to_str().unwrap();
    let secret_disk = scratch("root-only.img", &[0u8; 4096]);
    std::fs::set_permissions(
        &secret_disk,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let readable_disk = scratch("read-only.img", &[0u8; 4096]);
    std::fs::set_permissions(
        &readable_disk,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    for (disk, needle) in [
        (format!("{},ro", secret_disk.display()), "make it readable"),
        (readable_disk.display().to_string(), "not writable"),
    ] {
        let o = as_nobody(&["run", "--kernel", kernel, "--no-initrd", "--disk", &disk]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(BAD_INPUT), "{err}");
        assert!(err.contains(needle) && err.lines().count() == 1, "{err}");
    }
}

#[test]
fn bad_disks() {
    let img = scratch("disk.img", &[0u8; 4096]);
    let img = img.to_str().unwrap();
    let dir = std::env::temp_dir();
    let dir = dir.to_str().unwrap();
    for (args, needles) in [
        (
            vec!["--disk", "/nonexistent/disk.img"],
            vec!["/nonexistent/disk.img", "no such file"],
        ),
        (vec!["--disk", dir], vec!["is a directory"]),
        (vec!["--disk", img, "--disk", img], vec!["given twice"]),
        (vec!["--rootfs", img, "--disk", img], vec!["given twice"]),
        (
            vec!["--disk", &format!("{img},rw")],
            vec!["--disk", "unknown option"],
        ),
    ] {
        let tiny = tiny();
        let mut a = vec!["run", "--kernel", tiny.as_str(), "--no-initrd"];
        a.extend(args);
        expect_error(&a, BAD_INPUT, &needles);
    }
}

#[test]
fn bad_network_and_vsock() {
    let tiny = tiny();
    let exists = scratch("exists.sock", b"x");
    for (args, needles) in [
        (
            vec!["--net", "tap=ember-no-tap"],
            vec!["--net tap=ember-no-tap: ", "ip tuntap add"],
        ),
        (vec!["--net", "tap=lo"], vec!["not a TAP device"]),
        (
            vec!["--net", "mac=02:00:00:00:00:01"],
            vec!["--net", "tap="],
        ),
        (
            vec!["--vsock", &format!("cid=3,uds={}", exists.display())],
            vec!["already exists"],
        ),
        (
            vec!["--vsock", "cid=3,uds=/nonexistent-dir/v.sock"],
            vec!["does not exist"],
        ),
        (vec!["--vsock", "cid=2,uds=/tmp/x.sock"], vec!["reserved"]),
    ] {
        let mut a = vec!["run", "--kernel", tiny.as_str(), "--no-initrd"];
        a.extend(args);
        expect_error(&a, BAD_INPUT, &needles);
    }
}

#[test]
fn bad_config_files() {
    let tiny = tiny();
    let not_json = scratch("not.json", b"this is not json");
    let unknown = scratch("unknown.json", br#"{"machine-config": {"vcpus": 2}}"#);
    for (file, needles) in [
        (
            not_json.to_str().unwrap(),
            vec!["not a valid ember configuration"],
        ),
        (unknown.to_str().unwrap(), vec!["unknown field `vcpus`"]),
        (
            "/nonexistent/vm.json",
            vec!["/nonexistent/vm.json", "no such file"],
        ),
    ] {
        expect_error(
            &["run", "--kernel", &tiny, "--config", file],
            BAD_INPUT,
            &needles,
        );
    }
}

/// A FIFO at `path`.
fn fifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a live NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn inputs_are_checked_before_they_are_read() {
    let tiny = tiny();
    let fifo_cfg = scratch("placeholder-a", b"").with_file_name("vm.fifo");
    fifo(&fifo_cfg);
    let big = scratch("big.json", b"");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    // A config that is a device, a FIFO or a disk image: refused at once, nothing read.
    for (file, needle) in [
        ("/dev/zero", "a character device, not a regular file"),
        ("/dev/urandom", "a character device, not a regular file"),
        (fifo_cfg.to_str().unwrap(), "a FIFO, not a regular file"),
        (
            big.to_str().unwrap(),
            "more than a configuration file may be",
        ),
    ] {
        expect_error(
            &["run", "--kernel", &tiny, "--config", file],
            BAD_INPUT,
            &[&format!("--config {file}: "), needle],
        );
    }
    // Disks that are not disks.
    let empty = scratch("empty.img", b"");
    let fifo_disk = fifo_cfg.with_file_name("disk.fifo");
    fifo(&fifo_disk);
    for (disk, needle) in [
        (
            "/dev/null".to_string(),
            "a character device, not a disk image",
        ),
        (
            "/dev/zero".to_string(),
            "a character device, not a disk image",
        ),
        (fifo_disk.display().to_string(), "a FIFO, not a disk image"),
        ("/proc/self/mem".to_string(), "at least one 512-byte sector"),
        (
            empty.display().to_string(),
            "0 bytes: a disk needs at least one",
        ),
    ] {
        for flag in ["--disk", "--rootfs"] {
            expect_error(
                &["run", "--kernel", &tiny, "--no-initrd", flag, &disk],
                BAD_INPUT,
                &[&format!("{flag} {disk}: "), needle],
            );
        }
    }
}

#[test]
fn errors_name_the_input_as_the_user_gave_it() {
    let tiny = tiny();
    let disk = scratch("named.img", &[0u8; 4096]);
    let disk = disk.to_str().unwrap();
    let json = |body: &str| {
        let p = scratch(
            &format!(
                "named-{:x}.json",
                body.len() * 31 + body.bytes().map(usize::from).sum::<usize>()
            ),
            body.replace("KERNEL", &tiny)
                .replace("DISK", disk)
                .as_bytes(),
        );
        p.to_str().unwrap().to_string()
    };
    for (body, needles) in [
        (
            r#"{"boot-source": {"kernel_image_path": "KERNEL", "no_initrd": true}, "machine-config": {"vcpu_count": 0, "mem_size_mib": 128}}"#,
            vec![": machine-config.vcpu_count: 0: ", "use 1 or more"],
        ),
        (
            r#"{"boot-source": {"kernel_image_path": "KERNEL", "no_initrd": true}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 1}}"#,
            vec![": machine-config.mem_size_mib: 1: "],
        ),
        (
            r#"{"boot-source": {"kernel_image_path": ""}}"#,
            vec![": boot-source.kernel_image_path: \"\": empty"],
        ),
        (
            r#"{"boot-source": {"kernel_image_path": "KERNEL", "no_initrd": true}, "drives": [{"drive_id": "a", "path_on_host": "", "is_root_device": false}]}"#,
            vec![": drives[0].path_on_host: \"\": empty"],
        ),
        (
            r#"{"boot-source": {"kernel_image_path": "KERNEL", "no_initrd": true}, "network-interfaces": [{"iface_id": "e", "host_dev_name": "t", "guest_mac": "01:00:00:00:00:01"}]}"#,
            vec![": network-interfaces[0].guest_mac: ", "multicast"],
        ),
        (
            r#"{"boot-source": {"kernel_image_path": "KERNEL", "no_initrd": true}, "network-interfaces": [{"iface_id": "e", "host_dev_name": "seventeen-chars-x"}]}"#,
            vec![
                ": network-interfaces[0].host_dev_name: ",
                "1 to 15 characters",
            ],
        ),
        (
            r#"{"boot-source": {"kernel_image_path": "KERNEL", "no_initrd": true}, "vsock": {"guest_cid": 2, "uds_path": "/tmp/ember-named.sock"}}"#,
            vec![": vsock.guest_cid: 2: ", "reserved"],
        ),
        (
            r#"{"boot-source": {"kernel_image_path": "KERNEL", "no_initrd": true}, "drives": [{"drive_id": "r", "path_on_host": "DISK", "is_root_device": true, "rate_limiter": {"ops": {"size": 5, "refill_time": 10}}}]}"#,
            vec![
                ": drives[0].rate_limiter: ",
                "not supported by ember",
                "no I/O rate limiter",
            ],
        ),
    ] {
        let file = json(body);
        let mut n = vec![file.as_str()];
        n.extend(needles.iter());
        expect_error(&["run", "--config", &file], BAD_INPUT, &n);
        assert!(!file.is_empty());
    }
    // The same values from flags name the flags.
    for (args, needles) in [
        (
            vec!["--rootfs", "nope.img"],
            vec!["--rootfs nope.img: no such file"],
        ),
        (vec!["--vcpus", "0"], vec!["--vcpus 0: "]),
        (
            vec!["--net", "tap=a,tap=b"],
            vec!["--net tap=a,tap=b: ", "given twice"],
        ),
        (
            vec!["--vsock", "cid=3,cid=4,uds=/tmp/x"],
            vec!["--vsock cid=3,cid=4,uds=/tmp/x: ", "given twice"],
        ),
        (
            vec!["--disk", &format!("{disk},ro,ro")],
            vec!["--disk ", "given twice"],
        ),
        (
            vec!["--vsock", "cid=4294967296,uds=/tmp/x"],
            vec!["out of range"],
        ),
        (
            vec!["--vsock", "cid=4294967295,uds=/tmp/ember-any.sock"],
            vec!["VMADDR_CID_ANY"],
        ),
        (
            vec!["--net", "tap=t0,mac=00:00:00:00:00:00"],
            vec!["null address"],
        ),
        (
            vec![
                "--disk",
                &format!("{disk},id=0123456789abcdefghijA"),
                "--disk",
                &format!("{disk}x,id=0123456789abcdefghijB"),
            ],
            vec!["first 20 bytes"],
        ),
    ] {
        let mut a = vec!["run", "--kernel", tiny.as_str(), "--no-initrd"];
        a.extend(args);
        expect_error(&a, BAD_INPUT, &needles);
    }
    // An argument that is not UTF-8 is named.
    use std::os::unix::ffi::OsStrExt;
    let o = ember()
        .args(["run", "--cmdline"])
        .arg(std::ffi::OsStr::from_bytes(b"\xff"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(BAD_INPUT), "{err}");
    assert!(
        err.contains("(the value of --cmdline) is not valid UTF-8"),
        "{err}"
    );
}

#[test]
fn disks_on_read_only_mounts_and_symlink_loops_say_why() {
    let test = "disks_on_read_only_mounts_and_symlink_loops_say_why";
    let tiny = tiny();
    let dir = scratch("placeholder-b", b"");
    let dir = dir.parent().unwrap();
    let a = dir.join("a.img");
    let b = dir.join("b.img");
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    expect_error(
        &[
            "run",
            "--kernel",
            &tiny,
            "--no-initrd",
            "--disk",
            a.to_str().unwrap(),
        ],
        BAD_INPUT,
        &["a loop of symbolic links"],
    );
    // A read-only file system: a tmpfs mounted read-only in a mount namespace of its own.
    let ember_bin = env!("CARGO_BIN_EXE_ember");
    let script = format!(
        "set -e; d=$(mktemp -d); mount -t tmpfs tmpfs $d; head -c 4096 /dev/zero > $d/r.img; \
         mount -o remount,ro $d; exec {ember_bin} run --kernel {tiny} --no-initrd --disk $d/r.img"
    );
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output();
    let Ok(o) = o else {
        skip(test, "needs unshare (util-linux)");
        return;
    };
    let err = String::from_utf8_lossy(&o.stderr);
    if err.contains("unshare failed") || err.contains("Operation not permitted") {
        skip(test, "needs root for a mount namespace");
        return;
    }
    assert_eq!(o.status.code(), Some(BAD_INPUT), "{err}");
    assert!(
        err.contains("on a read-only file system") && err.contains("add ,ro"),
        "{err}"
    );
}

#[test]
fn a_tun_device_is_not_taken_for_a_broken_tap() {
    let test = "a_tun_device_is_not_taken_for_a_broken_tap";
    let ns = format!("ember-tun{}", std::process::id());
    let ip = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ip(&["netns", "add", &ns]) {
        skip(test, "needs root and iproute2 for a network namespace");
        return;
    }
    struct DropNs(String);
    impl Drop for DropNs {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _cleanup = DropNs(ns.clone());
    assert!(ip(&[
        "netns", "exec", &ns, "ip", "tuntap", "add", "tun0", "mode", "tun"
    ]));
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            env!("CARGO_BIN_EXE_ember"),
            "run",
            "--kernel",
        ])
        .arg(guest("hello64"))
        .args(["--no-initrd", "--net", "tap=tun0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(BAD_INPUT), "{err}");
    assert!(
        err.contains("--net tap=tun0: ")
            && err.contains("a TUN device")
            && err.contains("mode tap"),
        "{err}"
    );
}

#[test]
fn console_output_stdout_cannot_take_is_said_once_and_counted() {
    // /dev/full refuses every write: the guest's line is dropped, said once, counted at exit.
    let o = ember()
        .args(["run", "--kernel"])
        .arg(guest("flood"))
        .args(["--no-initrd"])
        .stdin(Stdio::null())
        .stdout(
            std::fs::File::options()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        )
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(
        err.matches("stdout cannot take the guest's console output")
            .count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("bytes of the guest's console output were dropped"),
        "{err}"
    );
}

#[test]
fn a_program_run_refuses_bad_input_before_anything_starts() {
    let tiny = tiny();
    let file = scratch("not-a-dir.txt", b"x");
    let script = scratch("not-executable.sh", b"#!/bin/sh\nexit 0\n");
    let file = file.to_str().unwrap();
    for (args, code, needles) in [
        (
            vec!["--rwdir", "/nonexistent/ember-out", "--", "true"],
            BAD_INPUT,
            vec!["--rwdir /nonexistent/ember-out: no such directory"],
        ),
        (
            vec!["--rwdir", file, "--", "true"],
            BAD_INPUT,
            vec!["--rwdir ", "not a directory"],
        ),
        (
            vec!["--root", "/nonexistent/rootfs", "--", "true"],
            BAD_INPUT,
            vec!["--root /nonexistent/rootfs: no such directory"],
        ),
        (
            vec!["--rwdir", "/tmp"],
            BAD_INPUT,
            vec!["--rwdir", "no program was given", "-- PROG"],
        ),
        (
            vec!["--", "no-such-program-ember"],
            127,
            vec!["command not found"],
        ),
        (
            vec!["--", script.to_str().unwrap()],
            126,
            vec!["not-executable.sh", "not an executable file"],
        ),
        (vec!["--", "/"], 126, vec!["is a directory"]),
        (
            vec!["--user", "no-such-user-ember", "--", "true"],
            BAD_INPUT,
            vec!["--user no-such-user-ember", "no such user"],
        ),
    ] {
        let mut a = vec!["run", "--kernel", tiny.as_str()];
        a.extend(args);
        expect_error(&a, code, &needles);
    }
    // A program run needs a Linux kernel: the tiny guest is not one.
    expect_error(
        &["run", "--kernel", &tiny, "--", "true"],
        BAD_INPUT,
        &["not a Linux kernel"],
    );
}
