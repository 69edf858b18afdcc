//! Arbitrary bytes as a kernel image: format detection, the ELF and bzImage loaders, initrd
//! placement and boot parameters.
#![no_main]

use std::io::Write;

use ember::arch::x86_64::boot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static MEM: vm_memory_holder::Mem = vm_memory_holder::Mem::new();
    }
    MEM.with(|m| {
        let path = std::env::temp_dir().join(format!("ember-fuzz-kernel-{}", std::process::id()));
        let Ok(mut f) = std::fs::File::create(&path) else {
            return;
        };
        if f.write_all(data).is_err() {
            return;
        }
        drop(f);
        let Ok(f) = std::fs::File::open(&path) else {
            return;
        };
        // Recognising the image reads its ELF notes too (whether it is Linux).
        let Ok(mut image) = boot::KernelImage::new("fuzz", f) else {
            return;
        };
        if let Ok(k) = boot::load_kernel(&m.0, m.1, &mut image) {
            let rd = boot::load_initrd(&m.0, m.1, &k, "fuzz", data).ok();
            let _ = boot::write_boot_params(&m.0, m.1, &k, 16, rd, 0xe_0000);
        }
    });
});

mod vm_memory_holder {
    /// 16 MiB of guest memory, made once per fuzzing thread.
    pub struct Mem(pub vm_memory::GuestMemoryMmap, pub u64);
    impl Mem {
        pub fn new() -> Self {
            let size = 16u64 << 20;
            Mem(
                ember::memory::create(size).expect("16 MiB of guest memory"),
                size,
            )
        }
    }
}
