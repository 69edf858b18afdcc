//! Snapshots end to end: a tiny guest (tests/guests/snapshot.S) runs, says ready, and ember
//! writes the VM into a directory and stops (`--snapshot-on-ready`); a new ember process
//! continues it from there (`--restore`), where the guest checks that its registers, its SSE
//! register, its memory, its local APIC timer and its UART came back as they were. Damaged
//! snapshots and VMs a snapshot cannot hold yet are refused in one line.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// What the guest prints after a restore (or after going on past the snapshot).
const CONTINUED: &str = "resumed\nsnapshot state intact\n";

/// A fresh scratch directory for `test`.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-snapshot-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Boots the snapshot guest with `--snapshot-on-ready dir` and `extra`.
fn take(dir: &Path, extra: &[&str]) -> Outcome {
    let mut args = vec!["--snapshot-on-ready", s(dir)];
    args.extend_from_slice(extra);
    run_guest("snapshot", &args)
}

fn restore(dir: &Path) -> Outcome {
    run(&["run", "--restore", s(dir)], Duration::from_secs(60))
}

/// A snapshot taken once for the refusal tests, copied per case.
fn taken(test: &str) -> PathBuf {
    let dir = scratch(test).join("snap");
    let o = take(&dir, &[]);
    assert_eq!(o.code, Some(0), "{o:?}");
    dir
}

fn copy_snapshot(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for name in ["state", "memory"] {
        std::fs::copy(from.join(name), to.join(name)).expect("copy");
    }
}

/// Overwrites bytes of `file` at `offset`.
fn poke(file: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .expect("open");
    f.write_all_at(bytes, offset).expect("write");
}

/// One line on stderr, starting `ember: `, containing every needle; exit `code`.
fn one_line_error(o: &Outcome, code: i32, needles: &[&str]) {
    assert_eq!(o.code, Some(code), "{o:?}");
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one error line: {o:?}");
    assert!(lines[0].starts_with("ember: "), "{o:?}");
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} missing from {:?}", lines[0]);
    }
    assert!(!o.stderr.contains("panicked"), "{o:?}");
}

#[test]
fn a_snapshot_taken_at_ready_continues_in_new_processes() {
    let dir = scratch("continues").join("snap");
    let o = take(&dir, &[]);
    assert_eq!(o.code, Some(0), "{o:?}");
    // The vCPU that said ready paused right after saying it: nothing after the port write
    // ran in this process.
    assert_eq!(o.stdout, "ready\n", "{o:?}");
    assert!(
        o.stderr
            .contains(&format!("ember run --restore {}", dir.display())),
        "{o:?}"
    );
    let memory = dir.join("memory");
    let before = std::fs::read(&memory).expect("memory file");
    // Twice from the same snapshot: a restore maps the memory file copy-on-write and never
    // writes it.
    for round in 0..2 {
        let o = restore(&dir);
        assert_eq!(o.code, Some(0), "round {round}: {o:?}");
        assert_eq!(o.stdout, CONTINUED, "round {round}: {o:?}");
        assert_eq!(o.stderr, "", "round {round}: {o:?}");
    }
    assert!(
        std::fs::read(&memory).expect("memory file") == before,
        "a restore changed the memory file"
    );
    // Guest RAM that was never written is a hole in the file, not zeros on disk.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&memory).expect("stat");
    assert!(
        meta.blocks() * 512 < meta.len() / 16,
        "the memory file is not sparse: {} of {} bytes on disk",
        meta.blocks() * 512,
        meta.len()
    );
}

/// Many VMs from one snapshot at once (tests/guests/resident.S: 32 MiB written before ready,
/// read back and partly overwritten after): each sees the memory as it was at the snapshot,
/// whatever the others write, and the memory file stays as it was. What they share is a
/// benchmark's figure (bench/snapshot-sharing.sh), not a test's.
#[test]
fn vms_restored_from_one_snapshot_at_once_each_read_its_memory_back() {
    let dir = scratch("resident").join("snap");
    let kernel = guest("resident");
    let o = run(
        &[
            "run",
            "--kernel",
            s(&kernel),
            "--no-initrd",
            "--mem-mib",
            "64",
            "--snapshot-on-ready",
            s(&dir),
        ],
        Duration::from_secs(60),
    );
    assert_eq!((o.code, o.stdout.as_str()), (Some(0), "ready\n"), "{o:?}");
    let before = std::fs::read(dir.join("memory")).expect("memory file");
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..3)
            .map(|_| {
                scope.spawn(|| {
                    run_until_then_stop(
                        &["run", "--restore", s(&dir)],
                        "resident: checked\n",
                        Duration::from_secs(60),
                    )
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("restore thread"))
            .collect()
    });
    for o in &outcomes {
        assert_eq!(o.stdout, "resident: checked\n", "{o:?}");
        // Stopped by the test's SIGTERM while halted.
        assert_eq!(o.code, Some(143), "{o:?}");
    }
    assert!(
        std::fs::read(dir.join("memory")).expect("memory file") == before,
        "a restore changed the memory file"
    );
}

/// Two and four vCPUs (tests/guests/smp.S): the snapshot is taken with every AP halted after
/// its first start, and in the restored VM the BSP starts each of them again (INIT, SIPI)
/// and waits for its answer.
#[test]
fn a_snapshot_of_several_vcpus_restores_every_one() {
    for n in [2u32, 4] {
        let dir = scratch(&format!("smp{n}")).join("snap");
        let vcpus = n.to_string();
        let o = run_guest(
            "smp",
            &[
                "--vcpus",
                &vcpus,
                "--overcommit-vcpus",
                "--snapshot-on-ready",
                s(&dir),
            ],
        );
        assert_eq!(o.code, Some(0), "{n} vCPUs: {o:?}");
        let o = restore(&dir);
        assert_eq!(o.code, Some(0), "{n} vCPUs: {o:?}");
        for id in 1..n {
            assert_eq!(
                o.stdout.matches(&format!("cpu {id} up\n")).count(),
                1,
                "vCPU {id} of {n} after the restore: {o:?}"
            );
        }
        assert!(
            o.stdout.ends_with(&format!("smp: all {n} cpus up\n")),
            "{n} vCPUs: {o:?}"
        );
    }
}

#[test]
fn continue_after_snapshot_runs_on_and_leaves_a_snapshot() {
    let dir = scratch("continue-after").join("snap");
    let o = take(&dir, &["--continue-after-snapshot"]);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(o.stdout, format!("ready\n{CONTINUED}"), "{o:?}");
    let o = restore(&dir);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(o.stdout, CONTINUED, "{o:?}");
}

#[test]
fn a_guest_that_never_says_ready_leaves_nothing() {
    let dir = scratch("never-ready");
    let made = dir.join("made-by-ember");
    let o = run_guest("hello64", &["--snapshot-on-ready", s(&made)]);
    // The guest's own output, then the one line.
    assert_eq!(o.code, Some(13), "{o:?}");
    assert!(o.stderr.contains("said ready"), "{o:?}");
    assert_eq!(o.stderr.lines().count(), 1, "{o:?}");
    assert!(!made.exists(), "ember left {} behind", made.display());
    // A directory that was there stays, empty.
    let o = run_guest("hello64", &["--snapshot-on-ready", s(&dir)]);
    assert_eq!(o.code, Some(13), "{o:?}");
    let left: Vec<_> = std::fs::read_dir(&dir).expect("read dir").collect();
    assert!(left.is_empty(), "ember left {left:?} behind");
    // A guest that crashes first fails as itself.
    let o = run_guest("triple", &["--snapshot-on-ready", s(&made)]);
    assert_eq!(o.code, Some(9), "{o:?}");
    assert!(!made.exists(), "{o:?}");
}

#[test]
fn damaged_snapshots_are_refused_in_one_line() {
    let good = taken("damaged");
    let root = good.parent().expect("parent").to_path_buf();
    let state_len = std::fs::metadata(good.join("state")).expect("stat").len();
    let case = |name: &str, damage: &dyn Fn(&Path), needles: &[&str]| {
        let dir = root.join(name);
        copy_snapshot(&good, &dir);
        damage(&dir);
        let o = restore(&dir);
        let mut all = vec!["--restore"];
        all.extend_from_slice(needles);
        one_line_error(&o, 2, &all);
        assert_eq!(o.stdout, "", "{name}: the guest ran: {o:?}");
    };
    case(
        "state-truncated",
        &|d| {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(d.join("state"))
                .unwrap();
            f.set_len(state_len / 2).unwrap();
        },
        &["state is damaged", "truncated", "take the snapshot again"],
    );
    case(
        "state-flipped",
        &|d| poke(&d.join("state"), state_len - 10, b"#"),
        &["state is damaged", "checksum"],
    );
    case(
        "state-not-a-snapshot",
        &|d| poke(&d.join("state"), 0, b"NOTASNAP"),
        &["is not an ember snapshot"],
    );
    case(
        "state-another-format",
        &|d| poke(&d.join("state"), 8, &3u32.to_le_bytes()),
        &["snapshot format 3", "reads format 2"],
    );
    case(
        "memory-code-changed",
        &|d| poke(&d.join("memory"), 0x10_0010, &[0x90]),
        &["memory does not belong to this snapshot", "checksum"],
    );
    case(
        "memory-hole-written",
        &|d| poke(&d.join("memory"), 5 << 20, &[1]),
        &["memory does not belong to this snapshot", "checksum"],
    );
    case(
        "memory-truncated",
        &|d| {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(d.join("memory"))
                .unwrap();
            f.set_len(64 << 20).unwrap();
        },
        &["memory does not belong to this snapshot", "bytes"],
    );
    case(
        "memory-missing",
        &|d| std::fs::remove_file(d.join("memory")).unwrap(),
        &["memory is missing"],
    );
    let o = restore(&root.join("not-there"));
    one_line_error(&o, 2, &["--restore", "not-there is missing"]);
    // The snapshot itself, unchanged: its memory file is vouched for by its stamp, not read.
    let o = run(
        &["run", "--restore", s(&good), "--log-level", "debug"],
        Duration::from_secs(60),
    );
    assert_eq!(o.stdout, CONTINUED, "{o:?}");
    assert!(o.stderr.contains("unwritten since the snapshot"), "{o:?}");
    // Written in place (the same file: no copy, same inode), it is read and refused.
    poke(&good.join("memory"), 0x10_0010, &[0x90]);
    one_line_error(
        &restore(&good),
        2,
        &["memory does not belong to this snapshot", "checksum"],
    );
    let o = restore(Path::new("/etc/passwd"));
    // A file is taken as a state file (as `PUT /snapshot/create` names them).
    one_line_error(
        &o,
        2,
        &["--restore", "/etc/passwd is not an ember snapshot"],
    );
}

/// A snapshot from a host of the other CPU vendor (its state file rewritten, resealed with a
/// valid checksum): refused in one line saying so, before KVM is given any of the state.
#[test]
fn a_snapshot_from_another_cpu_vendor_is_refused_in_one_line() {
    let from = taken("vendor");
    let dir = scratch("vendor-swapped").join("snap");
    copy_snapshot(&from, &dir);
    let state = dir.join("state");
    let bytes = std::fs::read(&state).expect("state file");
    // The header: magic, format, reserved, payload length, payload checksum (32 bytes).
    let (header, body) = bytes.split_at(32);
    let mut payload: serde_json::Value = serde_json::from_slice(body).expect("JSON payload");
    let mut swapped = 0;
    for vcpu in payload["vm"]["vcpus"].as_array_mut().expect("vcpus") {
        // Each kvm_cpuid_entry2 as its 40 bytes: function, index, flags, eax, ebx, ecx, edx, ...
        let cpuid = vcpu["cpuid"].as_array_mut().expect("cpuid");
        for entry in cpuid.iter_mut().filter_map(|e| e.as_array_mut()) {
            let word = |i: usize| entry[i].as_u64().unwrap_or(0) as u8;
            if (0..4).any(|i| word(i) != 0) {
                continue;
            }
            // EBX, ECX, EDX of leaf 0.
            let vendor: Vec<u8> = (16..28).map(word).collect();
            let other: &[u8; 12] = if &vendor[..] == b"GenuntelineI" {
                b"AuthcAMDenti"
            } else {
                b"GenuntelineI"
            };
            for (i, b) in other.iter().enumerate() {
                entry[16 + i] = serde_json::Value::from(*b);
            }
            swapped += 1;
        }
    }
    assert!(swapped > 0, "no CPUID leaf 0 in the state file");
    let body = serde_json::to_vec(&payload).expect("JSON");
    let mut out = header[..16].to_vec();
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&ember::snapshot::checksum::of(&body).to_le_bytes());
    out.extend_from_slice(&body);
    std::fs::write(&state, out).expect("rewrite the state file");
    one_line_error(&restore(&dir), 2, &["another CPU vendor's host"]);
}

/// 512 bytes of `disk` at `sector`.
fn sector(disk: &Path, sector: u64) -> Vec<u8> {
    let all = std::fs::read(disk).expect("read the disk");
    all[(sector * 512) as usize..][..512].to_vec()
}

/// tests/guests/snapshot_devices.c: a disk write made available (not yet notified) when the
/// snapshot is taken completes in the restored VM; the restored vsock device tells the guest
/// its streams were reset and serves a new connection to the host; the disk and the vsock
/// socket can be reattached to other host paths by id.
#[test]
fn a_snapshot_keeps_a_disk_write_in_flight_and_resets_vsock() {
    use std::os::unix::net::UnixListener;
    let dir = scratch("devices");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let sock = dir.join("v.sock");
    let snap = dir.join("snap");
    let disk_arg = format!("{},id=data", disk.display());
    let vsock_arg = format!("cid=7,uds={}", sock.display());
    let o = run_guest(
        "snapshot_devices",
        &[
            "--snapshot-on-ready",
            s(&snap),
            "--disk",
            &disk_arg,
            "--vsock",
            &vsock_arg,
        ],
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.ends_with("ready\n"), "{o:?}");
    assert!(
        sector(&disk, 2).starts_with(b"before the snapshot"),
        "{o:?}"
    );
    assert_eq!(
        sector(&disk, 3),
        vec![0u8; 512],
        "the staged write ran early"
    );
    let intact = |o: &Outcome| {
        assert_eq!(o.code, Some(0), "{o:?}");
        for line in [
            "restored\n",
            "disk: the write across the snapshot completed\n",
            "disk: sector 3 reads back\n",
            "vsock: transport reset\n",
            "vsock: cid 7\n",
            "vsock: connected to the host\n",
            "snapshot-devices: all ok\n",
        ] {
            assert!(o.stdout.contains(line), "{line:?} missing: {o:?}");
        }
        assert!(!o.stdout.contains("ready"), "{o:?}");
    };
    // Restored onto a copy of the disk and another socket, by the devices' ids.
    let copy = dir.join("copy.img");
    std::fs::copy(&disk, &copy).unwrap();
    let other = dir.join("w.sock");
    let _host = UnixListener::bind(format!("{}_1234", other.display())).expect("listen");
    let reattach_disk = format!("data={}", copy.display());
    let reattach_vsock = format!("vsock={}", other.display());
    let o = run(
        &[
            "run",
            "--restore",
            s(&snap),
            "--reattach",
            &reattach_disk,
            "--reattach",
            &reattach_vsock,
        ],
        Duration::from_secs(60),
    );
    intact(&o);
    assert!(
        sector(&copy, 3).starts_with(b"across the snapshot"),
        "{o:?}"
    );
    assert_eq!(
        sector(&disk, 3),
        vec![0u8; 512],
        "the original disk was written"
    );
    assert!(!other.exists(), "the socket is left behind");
    // Restored again with the snapshot's own paths.
    let _host = UnixListener::bind(format!("{}_1234", sock.display())).expect("listen");
    let o = restore(&snap);
    intact(&o);
    assert!(
        sector(&disk, 3).starts_with(b"across the snapshot"),
        "{o:?}"
    );
    // Reattachments that cannot be.
    let bad = |m: &str, needles: &[&str]| {
        let o = run(
            &["run", "--restore", s(&snap), "--reattach", m],
            Duration::from_secs(30),
        );
        one_line_error(&o, 2, needles);
    };
    bad(
        "nope=x",
        &["--reattach nope=x", "no device with id nope", "data, vsock"],
    );
    bad("data", &["--reattach data", "ID=PATH"]);
    bad(
        "data=/nonexistent/disk.img",
        &["--reattach data=/nonexistent/disk.img", "cannot open"],
    );
}

#[test]
fn snapshot_flags_bad_input() {
    let dir = scratch("bad-input");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let snap = dir.join("snap");
    // A program run (virtio-fs, ember's channel): refused before it starts, nothing made.
    // The refusal comes before any boot, so any Linux kernel does.
    if let Some(kernel) = project_kernel("vmlinux") {
        let o = run(
            &[
                "run",
                "--kernel",
                s(&kernel),
                "--snapshot-on-ready",
                s(&snap),
                "--",
                "/bin/true",
            ],
            Duration::from_secs(30),
        );
        one_line_error(
            &o,
            2,
            &["--snapshot-on-ready", "-- PROG", "virtio-fs", "--exec"],
        );
        assert!(!snap.exists(), "{o:?}");
    }
    // Not a directory.
    let o = take(&disk, &[]);
    one_line_error(&o, 2, &["--snapshot-on-ready", "is not a directory"]);
    // --continue-after-snapshot alone, --restore with boot flags.
    let o = run_guest("snapshot", &["--continue-after-snapshot"]);
    one_line_error(&o, 2, &["--snapshot-on-ready"]);
    let kernel = guest("snapshot");
    let o = run(
        &["run", "--restore", s(&snap), "--kernel", s(&kernel)],
        Duration::from_secs(30),
    );
    one_line_error(&o, 2, &["--restore", "--kernel"]);
}

/// TAP devices made for a test, deleted when it ends.
struct Taps(Vec<String>);

impl Taps {
    /// Makes TAPs named `names`, or says why not.
    fn make(names: &[&str]) -> Result<Self, String> {
        let mut taps = Taps(Vec::new());
        for name in names {
            let o = std::process::Command::new("ip")
                .args(["tuntap", "add", name, "mode", "tap"])
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if !o.status.success() {
                return Err(String::from_utf8_lossy(&o.stderr).trim().to_string());
            }
            taps.0.push(name.to_string());
        }
        Ok(taps)
    }
}

impl Drop for Taps {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", name])
                .output();
        }
    }
}

/// A VM with a network interface is snapshotted and restored onto another TAP by the
/// interface's id; a TAP that is not there is named in one line.
#[test]
fn a_snapshot_reattaches_its_network_interface_by_id() {
    let test = "a_snapshot_reattaches_its_network_interface_by_id";
    let id = std::process::id() % 100_000;
    let (a, b) = (format!("esnp{id}a"), format!("esnp{id}b"));
    let _taps = match Taps::make(&[&a, &b]) {
        Ok(t) => t,
        Err(why) => return skip(test, &format!("cannot make a TAP here ({why})")),
    };
    let snap = scratch("net").join("snap");
    let o = take(&snap, &["--net", &format!("tap={a}")]);
    assert_eq!(o.code, Some(0), "{o:?}");
    let o = run(
        &[
            "run",
            "--restore",
            s(&snap),
            "--reattach",
            &format!("eth0={b}"),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(o.stdout, CONTINUED, "{o:?}");
    let o = restore(&snap);
    assert_eq!(o.stdout, CONTINUED, "{o:?}");
    let o = run(
        &["run", "--restore", s(&snap), "--reattach", "eth0=esnpnone"],
        Duration::from_secs(30),
    );
    one_line_error(
        &o,
        2,
        &["--reattach eth0=esnpnone", "no such network device"],
    );
}
