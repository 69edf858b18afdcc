//! Arbitrary bytes as a `--config` file, through the loader (the file checks, JSON, Firecracker's
//! fields) and validation: every error is one line that names the file, nothing panics.
#![no_main]

use ember::config::VmConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("ember-fuzz-config-{}.json", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let shown = path.display().to_string();
    let result = VmConfig::from_file(&path).and_then(|c| c.validate());
    if let Err(e) = result {
        let e = e.to_string();
        assert!(!e.contains('\n'), "{e}");
        // Each error names the file, except the default kernel's (no file field set it).
        assert!(
            e.contains(&shown) || e.starts_with("default kernel") || e.starts_with("boot-source:"),
            "{e}"
        );
    }
});
