//! A guest's virtio-fs requests, whole: the fuzzer's bytes are guest memory holding both
//! queues and every FUSE message the chains point at, served by ember's device (its own
//! thread, the FUSE server, the passthrough file system under ember's policy) over a small
//! tree: read-only, or writable when the second byte is odd.
#![no_main]

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use ember::devices::virtio::fs::{Fs, Share};
use libfuzzer_sys::fuzz_target;

/// A small tree, made once per fuzzing process.
fn tree() -> &'static PathBuf {
    static TREE: OnceLock<PathBuf> = OnceLock::new();
    TREE.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("ember-fuzz-fs-{}", std::process::id()));
        std::fs::create_dir_all(p.join("dir/sub")).expect("make the fuzz tree");
        std::fs::write(p.join("file"), b"fuzz me\n").expect("make the fuzz tree");
        std::fs::write(p.join("dir/sub/deep"), vec![7u8; 70_000]).expect("make the fuzz tree");
        let _ = std::os::unix::fs::symlink("/etc/passwd", p.join("link"));
        p
    })
}

fuzz_target!(|data: &[u8]| {
    let writable = data.get(1).is_some_and(|b| b & 1 != 0);
    let Ok(share) = Share::prepare(tree(), writable) else {
        return;
    };
    let Ok(fs) = Fs::new("fuzz", share, None, false) else {
        return;
    };
    common::drive_and_wait(fs, 2, data, 1, Duration::from_millis(5));
});
