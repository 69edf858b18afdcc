//! Devices ember emulates in userspace. The PIC, IOAPIC, LAPIC and PIT live in KVM.

pub mod boot_timer;
pub mod bus;
pub mod i8042;
pub mod manager;
pub mod power;
pub mod serial;
pub mod virtio;
