//! The newc writer with arbitrary names, modes and contents: the archive must stay 4-aligned
//! and every header well formed.
#![no_main]

use ember::initramfs::{CpioWriter, build};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut w = CpioWriter::new();
    for chunk in data.split(|&b| b == 0).take(64) {
        let name = String::from_utf8_lossy(chunk.get(..chunk.len().min(64)).unwrap_or(&[]));
        let mode = u32::from(chunk.first().copied().unwrap_or(0)) * 7;
        match chunk.len() % 3 {
            0 => w.dir(&name, mode),
            1 => w.file(&name, mode, chunk),
            _ => w.char_dev(&name, mode, u32::from(chunk.len() as u8), 1),
        };
    }
    let out = w.finish();
    assert_eq!(out.len() % 4, 0);
    assert!(out.starts_with(b"070701"));
    let args: Vec<String> = data
        .split(|&b| b == b' ')
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let img = build(b"init", Some((data, &args)));
    assert_eq!(img.len() % 4, 0);
});
