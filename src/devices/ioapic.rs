//! The IOAPIC, in userspace. ember runs KVM's split irqchip: only the local APICs are in KVM,
//! so a VM costs no in-kernel PIC, IOAPIC and PIT to create or destroy (docs/startup-latency.md
//! has the figures). The IOAPIC's job then shrinks to translation: each unmasked redirection
//! entry becomes an MSI route for its pin's GSI (KVM_SET_GSI_ROUTING), and the devices' irqfds
//! on those GSIs reach the local APICs through KVM without ember in the path.
//!
//! The register interface is that of an IOAPIC of version 0x20 (the chipset IOAPICs after the
//! 82093AA, with an EOI register): IOREGSEL at 0x00, IOWIN at 0x10, EOI at 0x40; ID, version,
//! arbitration, then two 32-bit registers per redirection entry. Version 0x20 matters: with an
//! older one Linux clears a level-triggered pin's remote IRR by rewriting its entry (mask,
//! edge, unmask, level), and every rewrite here would be a KVM_SET_GSI_ROUTING.
//!
//! Everything here is guest-controlled input: any offset, size or value is accepted and either
//! applied or ignored, never trusted.

use std::sync::Arc;

use kvm_bindings::{KVM_IRQ_ROUTING_MSI, KvmIrqRouting, kvm_irq_routing_entry};
use kvm_ioctls::VmFd;

use super::bus::BusDevice;
use crate::arch::x86_64::layout::{IOAPIC_PINS, IOAPIC_VERSION, LAPIC_START};

/// The MMIO window the IOAPIC occupies.
pub const IOAPIC_MMIO_LEN: u64 = 0x1000;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;

const REG_ID: u8 = 0x00;
const REG_VERSION: u8 = 0x01;
const REG_ARBITRATION: u8 = 0x02;
const REG_REDIRECTION: u8 = 0x10;

/// Version 0x20 has the EOI register; bits 16-23 hold the highest entry's index.
const VERSION: u32 = IOAPIC_VERSION as u32 | ((IOAPIC_PINS as u32 - 1) << 16);
/// The ID register's writable bits (the APIC id, 24-27).
const ID_MASK: u32 = 0x0f00_0000;

// Redirection entry bits.
const RTE_VECTOR: u64 = 0xff;
const RTE_DELIVERY_SHIFT: u32 = 8;
const RTE_DELIVERY_MASK: u64 = 0x7;
const RTE_DEST_LOGICAL: u64 = 1 << 11;
/// Delivery status and remote IRR: the IOAPIC's to set, read-only to the guest.
const RTE_READ_ONLY: u64 = (1 << 12) | (1 << 14);
const RTE_LEVEL: u64 = 1 << 15;
const RTE_MASKED: u64 = 1 << 16;
/// Bits 56-63: the destination APIC id (or logical set). ember's APIC ids fit in 8 bits (at
/// most 254 vCPUs), so the extended destination ids some hypervisors offer are not needed.
const RTE_DEST_SHIFT: u32 = 56;
/// ExtINT: the interrupt comes from a PIC, which this platform does not have.
const DELIVERY_EXTINT: u64 = 7;

/// MSI data bit 14: a level-triggered interrupt's "asserted" level.
const MSI_LEVEL_ASSERT: u64 = 1 << 14;

/// A redirection entry as it stands at reset: masked.
const RTE_RESET: u64 = RTE_MASKED;

/// One pin's interrupt as an MSI: what KVM sends to the local APICs when the pin's irqfd fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiRoute {
    /// The pin's GSI.
    pub gsi: u32,
    /// The MSI address (destination, destination mode).
    pub address: u64,
    /// The MSI data (vector, delivery mode, trigger mode).
    pub data: u32,
}

/// Where the IOAPIC installs its routes: KVM's GSI routing table, or a recorder in tests.
pub trait RouteTable: Send {
    /// Replaces the whole table with `routes`.
    fn install(&mut self, routes: &[MsiRoute]) -> std::io::Result<()>;
}

impl RouteTable for Arc<VmFd> {
    fn install(&mut self, routes: &[MsiRoute]) -> std::io::Result<()> {
        let mut table = KvmIrqRouting::new(0).map_err(std::io::Error::other)?;
        for r in routes {
            let mut entry = kvm_irq_routing_entry {
                gsi: r.gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            entry.u.msi.address_lo = r.address as u32;
            entry.u.msi.address_hi = (r.address >> 32) as u32;
            entry.u.msi.data = r.data;
            table.push(entry).map_err(std::io::Error::other)?;
        }
        self.set_gsi_routing(&table)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

/// The IOAPIC's registers and the routes they last produced.
pub struct Ioapic {
    id: u32,
    select: u8,
    entries: [u64; IOAPIC_PINS],
    routes: Box<dyn RouteTable>,
    installed: Vec<MsiRoute>,
    /// KVM refused the last table: the next entry write tries again, changed or not.
    refused: bool,
}

/// The IOAPIC's registers, for a snapshot: its id, the selected register, and every
/// redirection entry (the remote IRR and delivery-status bits with them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IoapicState {
    /// The ID register.
    pub id: u32,
    /// IOREGSEL.
    pub select: u8,
    /// The redirection table.
    pub entries: Vec<u64>,
}

impl Ioapic {
    /// The registers, for a snapshot.
    pub fn state(&self) -> IoapicState {
        IoapicState {
            id: self.id,
            select: self.select,
            entries: self.entries.to_vec(),
        }
    }

    /// Takes a snapshot's registers and installs the routes they make. `Err` when the state
    /// does not fit this IOAPIC (another pin count).
    pub fn restore(&mut self, state: &IoapicState) -> Result<(), String> {
        let entries: [u64; IOAPIC_PINS] = state.entries.as_slice().try_into().map_err(|_| {
            format!(
                "the IOAPIC has {} pins, the snapshot's {}",
                IOAPIC_PINS,
                state.entries.len()
            )
        })?;
        self.id = state.id & ID_MASK;
        self.select = state.select;
        self.entries = entries;
        self.update_routes();
        if self.refused {
            return Err("KVM refused the snapshot's interrupt routes".into());
        }
        Ok(())
    }

    /// An IOAPIC at reset (every pin masked, so no routes) with APIC id `id`, the one the MP
    /// table and the MADT give it, that installs its routes in `routes`.
    pub fn new(id: u8, routes: Box<dyn RouteTable>) -> Self {
        Self {
            id: (u32::from(id) << 24) & ID_MASK,
            select: 0,
            entries: [RTE_RESET; IOAPIC_PINS],
            routes,
            installed: Vec::new(),
            refused: false,
        }
    }

    fn read_register(&self) -> u32 {
        match self.select {
            REG_ID | REG_ARBITRATION => self.id,
            REG_VERSION => VERSION,
            r => match self.entry_half(r) {
                Some((pin, high)) => {
                    let e = self.entries[pin];
                    if high { (e >> 32) as u32 } else { e as u32 }
                }
                None => 0,
            },
        }
    }

    fn write_register(&mut self, value: u32) {
        match self.select {
            REG_ID => self.id = value & ID_MASK,
            r => {
                let Some((pin, high)) = self.entry_half(r) else {
                    return;
                };
                let old = self.entries[pin];
                let new = if high {
                    (old & 0xffff_ffff) | (u64::from(value) << 32)
                } else {
                    (old & !0xffff_ffff) | (u64::from(value) & !RTE_READ_ONLY)
                };
                self.entries[pin] = new;
                if new != old || self.refused {
                    self.update_routes();
                }
            }
        }
    }

    /// The redirection entry and half (`true`: bits 32-63) register `r` selects, if any.
    fn entry_half(&self, r: u8) -> Option<(usize, bool)> {
        let index = usize::from(r.checked_sub(REG_REDIRECTION)?);
        let pin = index / 2;
        (pin < IOAPIC_PINS).then_some((pin, index % 2 == 1))
    }

    /// Recomputes the routes and installs them when they changed: each KVM_SET_GSI_ROUTING
    /// waits for an SRCU grace period, and a guest rewrites entries far more often than it
    /// changes where an interrupt goes (Linux masks every pin at boot, twice).
    fn update_routes(&mut self) {
        let routes: Vec<MsiRoute> = (0..IOAPIC_PINS)
            .filter_map(|pin| route(pin as u32, self.entries[pin]))
            .collect();
        if routes == self.installed {
            return;
        }
        match self.routes.install(&routes) {
            Ok(()) => {
                log::debug!("IOAPIC: {} interrupt routes installed", routes.len());
                self.installed = routes;
                self.refused = false;
            }
            // KVM keeps the previous routes: the pins the guest changed deliver as before
            // until a later write gets the table in. One warning per refusal, not per retry.
            Err(e) => {
                if !self.refused {
                    log::warn!("IOAPIC: KVM refused the interrupt routes: {e}");
                }
                self.refused = true;
            }
        }
    }
}

/// Pin `gsi`'s route for redirection entry `entry`, or `None` when the entry delivers nothing:
/// masked, or ExtINT.
fn route(gsi: u32, entry: u64) -> Option<MsiRoute> {
    let delivery = (entry >> RTE_DELIVERY_SHIFT) & RTE_DELIVERY_MASK;
    if entry & RTE_MASKED != 0 || delivery == DELIVERY_EXTINT {
        return None;
    }
    let dest = (entry >> RTE_DEST_SHIFT) & 0xff;
    let logical = u64::from(entry & RTE_DEST_LOGICAL != 0);
    let address = LAPIC_START | (dest << 12) | (logical << 2);
    // A level-triggered entry keeps its trigger mode, so that the local APIC marks the vector
    // and KVM reports its EOI (KVM_EXIT_IOAPIC_EOI) instead of the guest having to write
    // ours. The devices pulse their lines (irqfds), so nothing is pending after an EOI.
    let data = (entry & RTE_VECTOR)
        | (delivery << RTE_DELIVERY_SHIFT)
        | if entry & RTE_LEVEL != 0 {
            RTE_LEVEL | MSI_LEVEL_ASSERT
        } else {
            0
        };
    Some(MsiRoute {
        gsi,
        address,
        data: data as u32,
    })
}

/// The register value in a little-endian access of up to 4 bytes.
fn value_of(data: &[u8]) -> u32 {
    let mut bytes = [0u8; 4];
    let n = data.len().min(4);
    bytes[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(bytes)
}

impl BusDevice for Ioapic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            IOREGSEL => u32::from(self.select),
            IOWIN => self.read_register(),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = bytes.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let value = value_of(data);
        match offset {
            IOREGSEL => self.select = value as u8,
            IOWIN => self.write_register(value),
            // The EOI register (0x40) among them: nothing is ever pending after an EOI (see
            // `route`).
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// The EOI register, which the device accepts and ignores.
    const EOI: u64 = 0x40;

    /// Records every table installed; fails when told to.
    #[derive(Clone, Default)]
    struct Recorder {
        tables: Arc<Mutex<Vec<Vec<MsiRoute>>>>,
        fail: Arc<Mutex<bool>>,
    }

    impl RouteTable for Recorder {
        fn install(&mut self, routes: &[MsiRoute]) -> std::io::Result<()> {
            if *self.fail.lock().unwrap() {
                return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
            }
            self.tables.lock().unwrap().push(routes.to_vec());
            Ok(())
        }
    }

    fn ioapic() -> (Ioapic, Recorder) {
        let r = Recorder::default();
        (Ioapic::new(2, Box::new(r.clone())), r)
    }

    fn write_reg(io: &mut Ioapic, reg: u8, value: u32) {
        io.write(IOREGSEL, &[reg]);
        io.write(IOWIN, &value.to_le_bytes());
    }

    fn read_reg(io: &mut Ioapic, reg: u8) -> u32 {
        io.write(IOREGSEL, &u32::from(reg).to_le_bytes());
        let mut d = [0u8; 4];
        io.read(IOWIN, &mut d);
        u32::from_le_bytes(d)
    }

    /// Writes pin `pin`'s entry as Linux does: high half, then low half.
    fn program(io: &mut Ioapic, pin: u8, entry: u64) {
        write_reg(io, REG_REDIRECTION + 2 * pin + 1, (entry >> 32) as u32);
        write_reg(io, REG_REDIRECTION + 2 * pin, entry as u32);
    }

    #[test]
    fn a_saved_state_restores_the_registers_and_the_routes() {
        let (mut io, _) = ioapic();
        write_reg(&mut io, REG_ID, 0x0500_0000);
        program(&mut io, 4, (3 << 56) | 0x31);
        let state = io.state();
        let (mut fresh, rec) = ioapic();
        fresh.restore(&state).unwrap();
        assert_eq!(fresh.state(), state);
        assert_eq!(read_reg(&mut fresh, REG_ID), 0x0500_0000);
        let tables = rec.tables.lock().unwrap();
        assert_eq!(tables.len(), 1, "the routes go in with the state");
        assert_eq!(tables[0].len(), 1);
        drop(tables);
        let mut short = state.clone();
        short.entries.pop();
        assert!(fresh.restore(&short).unwrap_err().contains("pins"));
    }

    #[test]
    fn identifies_as_a_24_pin_version_0x20_ioapic() {
        let (mut io, _) = ioapic();
        assert_eq!(read_reg(&mut io, REG_VERSION), 0x0017_0020);
        assert_eq!(read_reg(&mut io, REG_ID), 0x0200_0000);
        write_reg(&mut io, REG_ID, 0xffff_ffff);
        assert_eq!(read_reg(&mut io, REG_ID), 0x0f00_0000);
        assert_eq!(read_reg(&mut io, REG_ARBITRATION), 0x0f00_0000);
        let mut sel = [0u8; 4];
        io.read(IOREGSEL, &mut sel);
        assert_eq!(sel, [REG_ARBITRATION, 0, 0, 0]);
    }

    #[test]
    fn pins_start_masked_with_no_routes() {
        let (mut io, rec) = ioapic();
        for pin in 0..IOAPIC_PINS as u8 {
            assert_eq!(read_reg(&mut io, REG_REDIRECTION + 2 * pin), 1 << 16);
            assert_eq!(read_reg(&mut io, REG_REDIRECTION + 2 * pin + 1), 0);
        }
        // Masking a masked pin again changes nothing: no KVM call.
        program(&mut io, 4, RTE_MASKED | 0x31);
        program(&mut io, 4, RTE_MASKED | 0x31);
        assert!(rec.tables.lock().unwrap().is_empty());
    }

    #[test]
    fn an_unmasked_entry_becomes_an_msi_route_and_masking_removes_it() {
        let (mut io, rec) = ioapic();
        // Vector 0x31, fixed, physical destination APIC 3, edge.
        program(&mut io, 4, (3 << 56) | 0x31);
        // Lowest priority, logical destination 0x0f, level.
        program(
            &mut io,
            9,
            (0x0f << 56) | RTE_LEVEL | RTE_DEST_LOGICAL | (1 << 8) | 0x41,
        );
        program(&mut io, 4, (3 << 56) | RTE_MASKED | 0x31);
        let tables = rec.tables.lock().unwrap();
        let edge = MsiRoute {
            gsi: 4,
            address: 0xfee0_3000,
            data: 0x31,
        };
        let level = MsiRoute {
            gsi: 9,
            address: 0xfee0_f004,
            data: 0xc141,
        };
        assert_eq!(*tables, vec![vec![edge], vec![edge, level], vec![level]]);
        assert_eq!(
            read_reg(&mut io, REG_REDIRECTION + 8),
            (RTE_MASKED | 0x31) as u32
        );
        assert_eq!(read_reg(&mut io, REG_REDIRECTION + 9), 3 << 24);
    }

    #[test]
    fn only_the_8_bit_destination_reaches_the_msi_address() {
        let (mut io, rec) = ioapic();
        program(&mut io, 5, (0x12 << 56) | (0x7f << 48) | 0x50);
        let tables = rec.tables.lock().unwrap();
        assert_eq!(tables[0][0].address, 0xfee1_2000);
    }

    #[test]
    fn extint_and_read_only_bits_deliver_nothing_and_stay_clear() {
        let (mut io, rec) = ioapic();
        program(&mut io, 0, (7 << 8) | 0x30);
        assert!(rec.tables.lock().unwrap().is_empty());
        // Delivery status and remote IRR are the IOAPIC's: a guest write does not set them.
        program(&mut io, 1, RTE_MASKED | RTE_READ_ONLY);
        assert_eq!(read_reg(&mut io, REG_REDIRECTION + 2), RTE_MASKED as u32);
    }

    #[test]
    fn a_refused_table_keeps_the_last_one_and_is_tried_again() {
        let (mut io, rec) = ioapic();
        program(&mut io, 4, 0x31);
        *rec.fail.lock().unwrap() = true;
        program(&mut io, 5, 0x32);
        *rec.fail.lock().unwrap() = false;
        // The same value again: nothing changed, but the refused table is tried again.
        program(&mut io, 5, 0x32);
        let tables = rec.tables.lock().unwrap();
        assert_eq!(tables.len(), 2);
        assert_eq!(tables[1].len(), 2);
    }

    #[test]
    fn garbage_offsets_sizes_and_registers_are_harmless() {
        let (mut io, rec) = ioapic();
        for reg in [0x03u8, 0x0f, 0x40, 0xff] {
            write_reg(&mut io, reg, 0xffff_ffff);
            assert_eq!(read_reg(&mut io, reg), 0);
        }
        io.write(EOI, &[0x31]);
        io.write(0x7ff, &[1, 2, 3, 4, 5, 6, 7, 8]);
        io.write(IOWIN, &[]);
        let mut wide = [0xaau8; 8];
        io.read(IOWIN, &mut wide);
        io.read(0x20, &mut wide[..2]);
        assert_eq!(wide[..2], [0, 0]);
        assert!(rec.tables.lock().unwrap().is_empty());
    }
}
