//! Guest traffic on the IOAPIC's registers: (offset, width, value) quadruples; every route table
//! it produces must fit the 24 pins and be installed only when it changed.
#![no_main]

use ember::devices::bus::BusDevice;
use ember::devices::ioapic::{Ioapic, MsiRoute, RouteTable};
use libfuzzer_sys::fuzz_target;

/// Checks each table as KVM would receive it; fails some installs to exercise the retry.
struct Checker {
    last: Option<Vec<MsiRoute>>,
    calls: u32,
}

impl RouteTable for Checker {
    fn install(&mut self, routes: &[MsiRoute]) -> std::io::Result<()> {
        assert!(routes.len() <= 24);
        assert!(routes.iter().all(|r| r.gsi < 24 && r.address >> 20 == 0xfee));
        assert_ne!(self.last.as_deref(), Some(routes), "an unchanged table was installed");
        self.calls += 1;
        if self.calls % 7 == 0 {
            return Err(std::io::Error::other("refused"));
        }
        self.last = Some(routes.to_vec());
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut io = Ioapic::new(
        1,
        Box::new(Checker {
            last: None,
            calls: 0,
        }),
    );
    for op in data.chunks(4) {
        let (off, kind) = (op[0], op.get(1).copied().unwrap_or(0));
        let val = [op.get(2).copied().unwrap_or(0), op.get(3).copied().unwrap_or(0)];
        // Mostly the three registers; any offset in the window's first KiB now and then.
        let offset = match off & 7 {
            0 | 1 => 0x00,
            2..=4 => 0x10,
            5 => 0x40,
            _ => u64::from(off) << 2,
        };
        let width = 1 + (kind as usize & 7);
        if kind & 0x80 != 0 {
            let mut buf = [0u8; 8];
            io.read(offset, &mut buf[..width]);
        } else {
            let bytes = [val[0], val[1], kind & 0x7f, val[0] ^ val[1], 0, 0, 0, 0];
            io.write(offset, &bytes[..width]);
        }
    }
});
