//! Arbitrary text as the values of ember's flags (`--disk`, `--net`, `--vsock`, `--timeout`,
//! `--vcpus`, `--mem-mib`, a MAC address), then the flags' devices validated: every error is
//! one line that names the flag, nothing panics.
#![no_main]

use ember::config::{self, VmConfig};
use libfuzzer_sys::fuzz_target;

fn one_line(e: &str) {
    assert!(!e.contains('\n'), "{e}");
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut c = VmConfig::default();
    c.boot_source.kernel_image_path = Some("/proc/self/exe".into());
    c.boot_source.no_initrd = true;
    for (flag, r) in [
        ("--disk", config::parse_disk(&text, 0).map(|d| c.drives.push(d))),
        ("--net", config::parse_net(&text, 0).map(|n| c.network_interfaces.push(n))),
        ("--vsock", config::parse_vsock(&text).map(|v| c.vsock = Some(v))),
    ] {
        if let Err(e) = r {
            let e = e.to_string();
            one_line(&e);
            assert!(e.starts_with(flag), "{e}");
        }
    }
    for e in [
        config::parse_duration(&text).err(),
        config::parse_vcpus(&text).err(),
        config::parse_mem_mib(&text).err(),
        config::parse_mac(&text).err(),
    ]
    .into_iter()
    .flatten()
    {
        one_line(&e);
    }
    // The devices the flags made, validated: errors name the flag again.
    if let Err(e) = c.validate() {
        let e = e.to_string();
        one_line(&e);
        assert!(
            ["--disk", "--net", "--vsock"].iter().any(|f| e.starts_with(f)),
            "{e}"
        );
    }
});
