//! Arbitrary command lines and sizes through VmConfig validation.
#![no_main]

use std::path::PathBuf;

use ember::config::{InitrdChoice, VmConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let vcpus = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let mem_mib = u64::from(u32::from_le_bytes([data[4], data[5], data[6], data[7]]));
    let cmdline = String::from_utf8_lossy(&data[10..]).into_owned();
    let kernel = PathBuf::from(String::from_utf8_lossy(&data[8..10]).into_owned());
    let overcommit_vcpus = data[8] & 1 == 1;
    let c = VmConfig { kernel, initrd: InitrdChoice::None, cmdline, vcpus, mem_mib, overcommit_vcpus };
    if let Err(e) = c.validate() {
        // Every error is one line.
        assert!(!e.to_string().contains('\n'));
    }
});
