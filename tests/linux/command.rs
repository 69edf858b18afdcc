//! `ember run -- PROG`: the host's files and a host program in the VM (docs/host-work.md),
//! in the hardware tier, where the guest's userspace runs. Each test makes its own scratch
//! tree under the repository's target/ (the tier shares the repository read-write and the
//! host's root read-only, as ember then shares them again with its guest).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::*;

/// The exit code for a kernel that lacks a driver the run needs.
const MISSING_DRIVER: i32 = 11;

/// The project kernel in the hardware tier, or a SKIP line.
fn ready(test: &str) -> Option<String> {
    let k = kernel_or_skip(test, "vmlinux")?;
    if !hardware(test) {
        skip(
            test,
            "Linux userspace does not run on a PVM-based /dev/kvm (the share, the spec and the channel are unit-tested here)",
        );
        return None;
    }
    Some(k)
}

/// A fresh scratch directory for `test`, outside /tmp (which the guest has a tmpfs of).
fn scratch(test: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/command-tests")
        .join(test);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs ember in `dir` with `args` (after `run --kernel K --timeout 240`).
fn run_in(dir: &Path, kernel: &str, args: &[&str]) -> Outcome {
    let mut all = vec!["run", "--kernel", kernel, "--timeout", "240"];
    all.extend_from_slice(args);
    let child = ember()
        .args(&all)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait(child, HW_LIMIT)
}

#[test]
fn a_dynamic_host_program_returns_its_status() {
    let test = "a_dynamic_host_program_returns_its_status";
    let Some(k) = ready(test) else { return };
    let dir = scratch(test);
    // /bin/sh (dash) and python3: both dynamically linked, found on PATH.
    let o = run_in(&dir, &k, &["--", "sh", "-c", "exit 42"]);
    assert_eq!(o.code, Some(42), "{o:?}");
    let o = run_in(
        &dir,
        &k,
        &[
            "--",
            "python3",
            "-c",
            "import sys; print(sys.version_info[0]); sys.exit(3)",
        ],
    );
    assert_eq!((o.code, o.stdout.as_str()), (Some(3), "3\n"), "{o:?}");
    // Killed by a signal: 128 + 9, as a shell reports it.
    let o = run_in(&dir, &k, &["--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(o.code, Some(137), "{o:?}");
}

#[test]
fn stdout_and_stderr_arrive_apart_without_the_kernel_log() {
    let test = "stdout_and_stderr_arrive_apart_without_the_kernel_log";
    let Some(k) = ready(test) else { return };
    let dir = scratch(test);
    let o = run_in(
        &dir,
        &k,
        &[
            "--",
            "sh",
            "-c",
            "echo out1; echo err1 >&2; echo out2; echo err2 >&2",
        ],
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(o.stdout, "out1\nout2\n", "{o:?}");
    assert_eq!(o.stderr, "err1\nerr2\n", "{o:?}");
    // -v shows the kernel's log, on stderr, never on stdout.
    let o = run_in(&dir, &k, &["-v", "--", "sh", "-c", "echo out"]);
    assert_eq!(o.stdout, "out\n", "{o:?}");
    assert!(o.stderr.contains("Linux version 6.1"), "{o:?}");
}

#[test]
fn a_script_reads_the_current_directory_and_writes_an_rwdir() {
    let test = "a_script_reads_the_current_directory_and_writes_an_rwdir";
    let Some(k) = ready(test) else { return };
    let dir = scratch(test);
    std::fs::create_dir(dir.join("out")).unwrap();
    std::fs::write(dir.join("cases.txt"), "alpha\nbeta\ngamma\n").unwrap();
    let script = dir.join("run-tests.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n[ \"$1\" = --junit ] || exit 2\nn=$(wc -l < cases.txt)\n\
         echo \"<testsuite tests=\\\"$n\\\" cwd=\\\"$(pwd)\\\"/>\" > \"$2\"\necho ran $n\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = run_in(
        &dir,
        &k,
        &[
            "--rwdir",
            "./out",
            "--",
            "./run-tests.sh",
            "--junit",
            "out/report.xml",
        ],
    );
    assert_eq!((o.code, o.stdout.as_str()), (Some(0), "ran 3\n"), "{o:?}");
    let report = std::fs::read_to_string(dir.join("out/report.xml")).unwrap();
    assert_eq!(
        report,
        format!("<testsuite tests=\"3\" cwd=\"{}\"/>\n", dir.display())
    );
}

/// A checkout under the host's /tmp (where CI clones go), which the guest mounts a fresh
/// tmpfs over: the working directory and an `--rwdir` there are still the host's, and writes
/// outside the rwdir still vanish.
#[test]
fn a_working_directory_and_an_rwdir_under_tmp_are_the_hosts() {
    let test = "a_working_directory_and_an_rwdir_under_tmp_are_the_hosts";
    let Some(k) = ready(test) else { return };
    let dir = std::env::temp_dir().join(format!("ember-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("out")).unwrap();
    std::fs::write(dir.join("input.txt"), "from the host\n").unwrap();
    let o = run_in(
        &dir,
        &k,
        &[
            "--rwdir",
            "out",
            "--",
            "sh",
            "-c",
            "cat input.txt && pwd > out/pwd && echo gone > scratch && ls /tmp | wc -l",
        ],
    );
    let pwd = std::fs::read_to_string(dir.join("out/pwd")).unwrap_or_default();
    let scratch_written = dir.join("scratch").exists();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (Some(0), "from the host\n1\n"),
        "{o:?}"
    );
    assert_eq!(pwd, format!("{}\n", dir.display()));
    assert!(
        !scratch_written,
        "a write outside the rwdir reached the host"
    );
}

#[test]
fn writes_outside_the_rwdirs_vanish_and_the_host_is_never_written() {
    let test = "writes_outside_the_rwdirs_vanish_and_the_host_is_never_written";
    let Some(k) = ready(test) else { return };
    let dir = scratch(test);
    let host_file = dir.join("precious.txt");
    std::fs::write(&host_file, "original\n").unwrap();
    let f = host_file.display().to_string();
    // In the guest: the write succeeds in the overlay and is gone with the VM; as root, the
    // share mounted again read-write, and the root remounted: still no change on the host.
    let script = format!(
        "echo guest > {f} && cat {f}; \
         mount -o remount,rw / 2>/dev/null; \
         mkdir -p /mnt/again; mount -t virtiofs ember-root /mnt/again 2>/dev/null; \
         mount -o remount,rw /mnt/again 2>/dev/null; \
         if echo evil > /mnt/again{f} 2>/dev/null; then echo WROTE-THE-HOST; else echo refused; fi; \
         if rm /mnt/again{f} 2>/dev/null; then echo REMOVED-ON-THE-HOST; else echo refused; fi; \
         if cat /mnt/again{f} >/dev/null; then echo the-share-was-reached; fi"
    );
    let o = run_in(&dir, &k, &["--user", "root", "--", "sh", "-c", &script]);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(
        o.stdout, "guest\nrefused\nrefused\nthe-share-was-reached\n",
        "{o:?}"
    );
    assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "original\n");
}

#[test]
fn symbolic_links_do_not_escape_a_shared_tree() {
    let test = "symbolic_links_do_not_escape_a_shared_tree";
    let Some(k) = ready(test) else { return };
    if !Path::new("/bin/busybox").exists() {
        skip(test, "needs busybox-static for the root tree");
        return;
    }
    let dir = scratch(test);
    // A root of its own (--root): its absolute links point inside it, never at the host.
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/cat")).unwrap();
    std::fs::write(root.join("etc/hostname"), "inside-the-root\n").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../etc/hostname", root.join("rel")).unwrap();
    let o = run_in(
        &dir,
        &k,
        &[
            "--root",
            root.to_str().unwrap(),
            "--",
            "/bin/sh",
            "-c",
            "cat /abs /rel",
        ],
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(o.stdout, "inside-the-root\ninside-the-root\n", "{o:?}");
    // A writable directory's link out of it: written through in the guest, it reaches the
    // guest's own view (the overlay), never the host's /etc.
    let rw = dir.join("rw");
    std::fs::create_dir(&rw).unwrap();
    std::os::unix::fs::symlink("/etc", rw.join("escape")).unwrap();
    let target = format!("ember-escape-{}", std::process::id());
    let o = run_in(
        &dir,
        &k,
        &[
            "--user",
            "root",
            "--rwdir",
            "rw",
            "--",
            "sh",
            "-c",
            &format!("echo x > rw/escape/{target} && cat /etc/{target}"),
        ],
    );
    assert_eq!((o.code, o.stdout.as_str()), (Some(0), "x\n"), "{o:?}");
    assert!(
        !Path::new("/etc").join(&target).exists(),
        "the host's /etc was written"
    );
}

#[test]
fn open_unlink_fstat_and_a_large_tree() {
    let test = "open_unlink_fstat_and_a_large_tree";
    let Some(k) = ready(test) else { return };
    let dir = scratch(test);
    std::fs::create_dir(dir.join("out")).unwrap();
    // 1,000 files in 10 folders, and a 64 MiB file whose digest the guest recomputes.
    for d in 0..10 {
        let sub = dir.join(format!("tree/d{d}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..100 {
            std::fs::write(sub.join(format!("f{f}")), format!("{d}/{f}\n")).unwrap();
        }
    }
    let mut big = vec![0u8; 64 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in big.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    let digest = std::process::Command::new("sha256sum")
        .arg(dir.join("big.bin"))
        .output()
        .unwrap();
    let digest = String::from_utf8_lossy(&digest.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let py = "import os\n\
              for d in ('out', '/tmp'):\n\
              \x20   p = os.path.join(d, 'ephemeral')\n\
              \x20   f = open(p, 'w+'); f.write('still here'); f.flush()\n\
              \x20   os.unlink(p)\n\
              \x20   st = os.fstat(f.fileno()); f.seek(0)\n\
              \x20   print(d, st.st_size, st.st_nlink, f.read())\n";
    std::fs::write(dir.join("ouf.py"), py).unwrap();
    let o = run_in(
        &dir,
        &k,
        &[
            "--rwdir",
            "out",
            "--",
            "sh",
            "-c",
            "find tree -type f | wc -l; cat tree/d7/f42; sha256sum big.bin | cut -d' ' -f1; python3 ouf.py",
        ],
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(
        o.stdout,
        format!("1000\n7/42\n{digest}\nout 10 0 still here\n/tmp 10 0 still here\n"),
        "{o:?}"
    );
}

#[test]
fn an_interactive_shell_on_a_real_pty() {
    let test = "an_interactive_shell_on_a_real_pty";
    let Some(k) = ready(test) else { return };
    let dir = scratch(test);
    let (mut master, slave) = pty();
    let cooked = lflag(&slave);
    let mut child = ember()
        .args(["run", "--kernel", &k, "--timeout", "240", "--", "sh"])
        .current_dir(&dir)
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    master
        .write_all(b"echo $((6 * 7))-on-$(tty | cut -c1-9)\r")
        .unwrap();
    read_until(&mut master, &mut seen, "42-on-/dev/pts/", &mut child);
    master.write_all(b"exit 3\r").unwrap();
    let o = wait(child, HW_LIMIT);
    assert_eq!(o.code, Some(3), "{o:?}: {}", String::from_utf8_lossy(&seen));
    assert_eq!(lflag(&slave), cooked, "terminal left in raw mode");
}

#[test]
fn the_stock_debian_kernel_runs_a_program_with_its_modules() {
    let test = "the_stock_debian_kernel_runs_a_program_with_its_modules";
    let Some(deb) = debian_kernel() else {
        skip(test, "run kernels/fetch-debian-kernel.sh first");
        return;
    };
    if !hardware(test) {
        skip(test, "Linux userspace does not run on a PVM-based /dev/kvm");
        return;
    }
    let modules = ember::config::cache_dir().join("debian/modules");
    let Some(tree) = std::fs::read_dir(&modules)
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path())
    else {
        skip(
            test,
            "no modules tree: run kernels/fetch-debian-kernel.sh again",
        );
        return;
    };
    let dir = scratch(test);
    let deb = deb.display().to_string();
    let o = run_in(
        &dir,
        &deb,
        &[
            "--modules",
            tree.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "uname -r; exit 7",
        ],
    );
    assert_eq!(o.code, Some(7), "{o:?}");
    assert!(o.stdout.contains("cloud-amd64"), "{o:?}");
    // Without its modules the same kernel has no virtio at all: one line naming the option.
    let o = run_in(&dir, &deb, &["--", "true"]);
    assert_eq!(o.code, Some(MISSING_DRIVER), "{o:?}");
    let errors: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.starts_with("ember: ") && !l.contains("warning"))
        .collect();
    assert_eq!(errors.len(), 1, "{o:?}");
    assert!(errors[0].contains("CONFIG_VIRTIO_MMIO"), "{o:?}");
}

#[test]
fn twenty_program_runs_in_a_row() {
    let test = "twenty_program_runs_in_a_row";
    let Some(k) = ready(test) else { return };
    let dir = scratch(test);
    for i in 0..20 {
        let o = run_in(
            &dir,
            &k,
            &["--", "sh", "-c", &format!("echo run {i}; exit {}", i % 5)],
        );
        assert_eq!(o.code, Some(i % 5), "run {i}: {o:?}");
        assert_eq!(o.stdout, format!("run {i}\n"), "run {i}: {o:?}");
    }
}
