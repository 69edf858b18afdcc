//! Devices ember emulates in userspace, the IOAPIC among them. The local APICs live in KVM
//! (its split irqchip); there is no PIC and no PIT.

pub mod boot_timer;
pub mod bus;
pub mod i8042;
pub mod ioapic;
pub mod manager;
pub mod power;
pub mod serial;
pub mod virtio;
