//! Arbitrary configuration files and flag values through parsing and validation: every error
//! is one line, nothing panics.
#![no_main]

use ember::config::{self, VmConfig};
use libfuzzer_sys::fuzz_target;

fn one_line(e: impl std::fmt::Display) {
    assert!(!e.to_string().contains('\n'), "{e}");
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // As a --config file.
    if let Ok(c) = serde_json::from_str::<VmConfig>(&text)
        && let Err(e) = c.validate()
    {
        one_line(e);
    }
    // As flag values.
    for r in [
        config::parse_disk(&text, 0).err().map(|e| e.to_string()),
        config::parse_net(&text, 0).err().map(|e| e.to_string()),
        config::parse_vsock(&text).err().map(|e| e.to_string()),
        config::parse_duration(&text).err(),
    ]
    .into_iter()
    .flatten()
    {
        one_line(r);
    }
});
