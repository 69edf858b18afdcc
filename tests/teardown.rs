//! The deferred teardown: `ember run` hands the VM to a keeper process that outlives it and
//! ends by itself, under the VMM thread's seccomp filter; `--teardown inline` leaves nothing
//! behind. This test process is a child subreaper, so a keeper becomes its child when ember
//! exits; it is the only test in its binary, since it reaps any child.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Reaps one adopted child within `limit`: its wait status, or None if none appeared.
fn reap_one(limit: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: reaps any child of this process into a live local.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if r > 0 {
            return Some(status);
        }
        if r < 0 || start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_keeper_outlives_ember_and_ends_by_itself_unless_inline() {
    // SAFETY: a flag on this process; no memory is passed.
    let subreaper = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(subreaper, 0);
    for (how, extra) in [
        ("default (deferred, seccomp on)", &[][..]),
        ("deferred without seccomp", &["--no-seccomp"][..]),
    ] {
        let o = run_guest("hello_pvh", extra);
        assert_eq!(o.code, Some(0), "{how}: {o:?}");
        assert!(o.stdout.contains("start_info ok"), "{how}: {o:?}");
        let status = reap_one(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{how}: no keeper was left behind: {o:?}"));
        // Exit 0, not SIGSYS: everything the keeper does is in the filter it inherits.
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{how}: the keeper ended with wait status {status:#x}"
        );
        assert_eq!(
            reap_one(Duration::from_millis(200)),
            None,
            "{how}: two keepers"
        );
        assert!(o.stderr.is_empty(), "{how}: {o:?}");
    }
    let o = run_guest("hello_pvh", &["--teardown", "inline"]);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(
        reap_one(Duration::from_millis(500)),
        None,
        "--teardown inline left a process behind"
    );
}
