//! What a snapshot keeps of a virtio device on the MMIO transport: the transport's registers,
//! each queue as the driver set it up and as far as the device got through it, and the
//! interrupt status. A device's host side (its file, TAP or sockets) is not state: a restore
//! opens it again, by the device's id, from the path the snapshot names or one the user gives.
//!
//! Everything here comes from a file and is untrusted: a queue is rebuilt through
//! virtio-queue's checks (`Queue::try_from`), and one it refuses fails the restore.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};

/// One split virtqueue: virtio-queue's `QueueState`, which has no serde of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnap {
    /// The most entries the device offers.
    pub max_size: u16,
    /// The next available-ring entry the device will take.
    pub next_avail: u16,
    /// The next used-ring entry the device will fill.
    pub next_used: u16,
    /// Whether VIRTIO_F_RING_EVENT_IDX was negotiated.
    pub event_idx: bool,
    /// The size the driver chose.
    pub size: u16,
    /// Whether the driver finished setting it up.
    pub ready: bool,
    /// Guest-physical address of the descriptor table.
    pub desc_table: u64,
    /// Guest-physical address of the available ring.
    pub avail_ring: u64,
    /// Guest-physical address of the used ring.
    pub used_ring: u64,
}

impl From<QueueState> for QueueSnap {
    fn from(s: QueueState) -> Self {
        Self {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

impl QueueSnap {
    /// The queue again, through virtio-queue's checks (a size that is no power of two, a
    /// misaligned ring): `None` if it refuses.
    pub fn queue(&self) -> Option<Queue> {
        Queue::try_from(QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
        .ok()
    }
}

/// The MMIO transport of one device, with its queues.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// The device status register (virtio 1.2, 2.1).
    pub status: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver accepted.
    pub acked_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// Whether the device was serving its queues (DRIVER_OK, with usable queues).
    pub active: bool,
    /// The interrupt status register.
    pub interrupt_status: u32,
    /// Whether the device was waiting for the driver to reset it.
    pub needs_reset: bool,
    /// The queues, in the device's order: the device's own progress once active.
    pub queues: Vec<QueueSnap>,
    /// The device's own state, if it has any beyond its queues (the balloon's target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::QueueT;

    #[test]
    fn a_queue_round_trips_and_a_bad_one_is_refused() {
        let mut q = Queue::new(256).unwrap();
        q.set_size(8);
        q.set_desc_table_address(Some(0x20_0000), Some(0));
        q.set_avail_ring_address(Some(0x20_1000), Some(0));
        q.set_used_ring_address(Some(0x20_2000), Some(0));
        q.set_ready(true);
        q.set_next_avail(3);
        q.set_next_used(2);
        let snap = QueueSnap::from(q.state());
        let back = snap.queue().unwrap();
        assert_eq!(back.state(), q.state());
        let text = serde_json::to_string(&snap).unwrap();
        assert_eq!(serde_json::from_str::<QueueSnap>(&text).unwrap(), snap);
        // A size that is no power of two.
        let bad = QueueSnap { size: 7, ..snap };
        assert!(bad.queue().is_none());
    }
}
