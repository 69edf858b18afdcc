//! `--exec`: a static host program as the guest's workload, its exit status as ember's.

use super::*;

#[test]
fn exec_returns_the_program_status() {
    let test = "exec_returns_the_program_status";
    let Some(k) = exec_ready(test, "the initramfs it packs is unit-tested") else {
        return;
    };
    let busybox = BUSYBOX;
    // A clean exit, a status, and death by a signal (128 + 9, as a shell reports it).
    for (script, status) in [
        ("echo exec says hi", 0),
        ("echo exec says hi; exit 42", 42),
        ("echo exec says hi; kill -9 $$", 137),
    ] {
        let o = run(
            &[
                "run", "--kernel", &k, "--exec", busybox, "--", "sh", "-c", script,
            ],
            HW_LIMIT,
        );
        assert!(o.stdout.contains("exec says hi"), "{script}: {o:?}");
        assert_eq!(o.code, Some(status), "{script}: {o:?}");
        assert!(o.stderr.is_empty(), "{script}: {o:?}");
    }
}
