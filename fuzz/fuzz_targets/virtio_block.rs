//! A guest's block requests, whole: the fuzzer's bytes are guest memory holding the queue
//! (descriptor table, available ring) and every header and buffer the chains point at, so
//! request parsing, bounds checks against memory and the disk, and the I/O all run.
#![no_main]

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use ember::devices::virtio::block::Block;
use libfuzzer_sys::fuzz_target;

/// A 64 KiB disk, made once per fuzzing process (its contents change as the fuzzer writes).
fn disk() -> &'static PathBuf {
    static DISK: OnceLock<PathBuf> = OnceLock::new();
    DISK.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("ember-fuzz-disk-{}", std::process::id()));
        std::fs::write(&p, vec![0u8; 64 << 10]).expect("make the fuzz disk");
        p
    })
}

fuzz_target!(|data: &[u8]| {
    let read_only = data.get(1).is_some_and(|b| b & 1 != 0);
    let Ok(block) = Block::open("fuzz", disk(), read_only) else {
        return;
    };
    common::drive(block, 1, data, 1);
});
