//! A bus maps address ranges (I/O ports or guest-physical MMIO) to devices. Every guest access
//! the in-kernel devices do not handle lands here; accesses that hit no device are ignored
//! (writes) or read as all ones, like an open PC bus.

use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the start of the range it was inserted at.
pub trait BusDevice: Send {
    /// Handles a guest read of `data.len()` bytes.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest write.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors inserting a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range overlaps a device already on the bus, or is empty.
    #[error("bus range {start:#x}+{len:#x} is empty or overlaps another device")]
    Overlap {
        /// Start of the refused range.
        start: u64,
        /// Its length.
        len: u64,
    },
}

struct Entry {
    start: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A set of non-overlapping device ranges.
#[derive(Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[start, start + len)`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        start: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = start.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(BusError::Overlap { start, len });
        };
        if self
            .entries
            .iter()
            .any(|e| start < e.start + e.len && e.start < end)
        {
            return Err(BusError::Overlap { start, len });
        }
        self.entries.push(Entry { start, len, device });
        self.entries.sort_by_key(|e| e.start);
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(&Entry, u64)> {
        let idx = self
            .entries
            .partition_point(|e| e.start <= addr)
            .checked_sub(1)?;
        let e = &self.entries[idx];
        let offset = addr - e.start;
        // The whole access must fall inside the device's range.
        (offset.checked_add(size as u64)? <= e.len).then_some((e, offset))
    }

    /// Dispatches a read; returns `false` (and all-ones data) when no device claims it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, offset)) => {
                crate::sync::lock(&e.device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns `false` when no device claims it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, offset)) => {
                crate::sync::lock(&e.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_by_range() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fa, &mut d));
        assert_eq!(d, [2]);
        assert!(bus.write(0x3ff, &[7]));
        assert_eq!(dev.lock().unwrap().last_write, Some((7, vec![7])));
    }

    #[test]
    fn unclaimed_accesses_read_all_ones() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x3f8, 8)
            .unwrap();
        let mut d = [0u8; 4];
        assert!(!bus.read(0x3f7, &mut d[..1]));
        assert_eq!(d[0], 0xff);
        // An access that straddles the end of a range is not the device's.
        assert!(!bus.read(0x3fe, &mut d));
        assert!(!bus.write(0, &[1]));
        assert!(!bus.read(u64::MAX, &mut d));
    }

    #[test]
    fn overlaps_are_refused() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x60, 5).unwrap();
        assert!(bus.insert(dev.clone(), 0x64, 1).is_err());
        assert!(bus.insert(dev.clone(), 0x5f, 2).is_err());
        assert!(bus.insert(dev.clone(), 0x70, 0).is_err());
        assert!(bus.insert(dev, u64::MAX, 2).is_err());
    }
}
