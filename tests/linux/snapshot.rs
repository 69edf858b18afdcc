//! A Linux guest snapshotted where ember's init says ready (booted, its file systems mounted,
//! the `--exec` work not started) and restored again and again: each restored VM runs the
//! work afresh, its status becomes ember's, its clock has moved on to the host's time, it
//! reaches the host over vsock (the restored device told the guest its streams were reset)
//! and writes its disk, each restore on a disk and a socket of its own (`--reattach`).

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;

use super::*;

/// Takes one connection at `path` within `limit` and returns what it sent (answering
/// `reply`), or why not.
fn serve_once(
    path: &Path,
    reply: &'static str,
    limit: Duration,
) -> std::thread::JoinHandle<Result<String, String>> {
    let listener = UnixListener::bind(path).expect("listen");
    listener.set_nonblocking(true).expect("non-blocking");
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + limit;
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(format!("no connection within {limit:?}: {e}")),
            }
        };
        s.set_nonblocking(false).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
        let mut got = String::new();
        s.read_to_string(&mut got).map_err(|e| e.to_string())?;
        s.write_all(reply.as_bytes()).map_err(|e| e.to_string())?;
        Ok(got)
    })
}

#[test]
fn a_booted_linux_guest_restored_ten_times_runs_its_work_each_time() {
    let test = "a_booted_linux_guest_restored_ten_times_runs_its_work_each_time";
    let Some(k) = exec_ready(test, "tests/snapshot.rs covers the tiny guests") else {
        return;
    };
    let busybox = BUSYBOX;
    // Short: a vsock socket's path and its `_PORT` must fit a Unix socket address.
    let dir = std::env::temp_dir().join(format!("ember-snap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let snap = dir.join("snap");
    let snap_arg = snap.display().to_string();
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let disk_arg = format!("{},id=data", disk.display());
    let vsock_arg = format!("cid=3,uds={}", dir.join("snap.sock").display());
    // ember's init is also the vsock tool, when called `vsock`.
    let script = "echo work-$((6 * 7)); echo clock $(date +%s); \
                  mkdir -p /t && ln -sf /init /t/vsock && /t/vsock connect 2 5000 from-the-restored-guest; \
                  echo on-the-disk | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null && echo disk-written; \
                  exit 7";
    let o = run(
        &[
            "run",
            "--kernel",
            &k,
            "--exec",
            busybox,
            "--disk",
            &disk_arg,
            "--vsock",
            &vsock_arg,
            "--snapshot-on-ready",
            &snap_arg,
            "--",
            "sh",
            "-c",
            script,
        ],
        HW_LIMIT,
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(
        !o.stdout.contains("work-42"),
        "the work ran before ready: {o:?}"
    );
    // Time passes between the snapshot and the restores: the restored clocks must follow.
    std::thread::sleep(Duration::from_secs(3));
    for round in 0..10 {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let copy = dir.join(format!("disk-{round}.img"));
        std::fs::copy(&disk, &copy).unwrap();
        let sock = dir.join(format!("v{round}.sock"));
        let host = serve_once(
            Path::new(&format!("{}_5000", sock.display())),
            "host-reply",
            HW_LIMIT,
        );
        let o = run(
            &[
                "run",
                "--restore",
                &snap_arg,
                "--reattach",
                &format!("data={}", copy.display()),
                "--reattach",
                &format!("vsock={}", sock.display()),
            ],
            HW_LIMIT,
        );
        assert_eq!(o.code, Some(7), "round {round}: {o:?}");
        assert!(o.stdout.contains("work-42"), "round {round}: {o:?}");
        let clock: u64 = o
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("clock "))
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or_else(|| panic!("round {round}: no clock line: {o:?}"));
        // Within 2 s: in the tier the guest's clock trails the host's by about a second
        // from its emulated boot on (measured: 0.6-1.5 s behind at each restore). A clock
        // that did not move on would be 3 s and more behind, the time slept above.
        assert!(
            clock + 2 >= before,
            "round {round}: the restored guest's clock says {clock}, the host's was {before} before the restore: {o:?}"
        );
        assert!(o.stderr.is_empty(), "round {round}: {o:?}");
        let got = host
            .join()
            .unwrap_or_else(|_| Err("the host side panicked".into()));
        assert_eq!(
            got.as_deref(),
            Ok("from-the-restored-guest"),
            "round {round}: {o:?}"
        );
        assert!(
            o.stdout.contains("vsock reply: host-reply"),
            "round {round}: {o:?}"
        );
        assert!(o.stdout.contains("disk-written"), "round {round}: {o:?}");
        let written = std::fs::read(&copy).unwrap();
        assert!(
            written.starts_with(b"on-the-disk\n"),
            "round {round}: the disk's first sector: {:?}",
            String::from_utf8_lossy(&written[..32])
        );
    }
    assert_eq!(
        std::fs::read(&disk).unwrap(),
        vec![0u8; 1 << 20],
        "the snapshot's own disk was written"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
