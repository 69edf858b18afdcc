//! A Linux guest snapshotted where ember's init says ready (booted, its file systems mounted,
//! the `--exec` work not started) and restored again and again: each restored VM runs the
//! work afresh, its status becomes ember's, and its clock has moved on to the host's time.

use super::*;

#[test]
fn a_booted_linux_guest_restored_ten_times_runs_its_work_each_time() {
    let test = "a_booted_linux_guest_restored_ten_times_runs_its_work_each_time";
    let Some(k) = exec_ready(test, "tests/snapshot.rs covers the tiny guests") else {
        return;
    };
    let busybox = BUSYBOX;
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/snapshot-tests")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    let snap = dir.join("snap");
    let snap_arg = snap.display().to_string();
    let script = "echo work-$((6 * 7)); echo clock $(date +%s); exit 7";
    let o = run(
        &[
            "run",
            "--kernel",
            &k,
            "--exec",
            busybox,
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
        let o = run(&["run", "--restore", &snap_arg], HW_LIMIT);
        assert_eq!(o.code, Some(7), "round {round}: {o:?}");
        assert!(o.stdout.contains("work-42"), "round {round}: {o:?}");
        let clock: u64 = o
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("clock "))
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or_else(|| panic!("round {round}: no clock line: {o:?}"));
        assert!(
            clock + 1 >= before,
            "round {round}: the restored guest's clock says {clock}, the host's was {before} before the restore: {o:?}"
        );
        assert!(o.stderr.is_empty(), "round {round}: {o:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
