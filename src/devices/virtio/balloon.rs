//! virtio-balloon (virtio 1.2, 5.5): the guest gives memory back to the host while it runs.
//!
//! - **Inflate and deflate.** The host sets a target (`num_pages`); the guest's driver takes
//!   that many pages out of use and lists their frame numbers on the inflate queue, and ember
//!   discards them (`MADV_DONTNEED`: the host frees them, and a later guest access faults in
//!   a zeroed page, or the snapshot's page for memory mapped from one). Pages the driver takes
//!   back (a lower target, or its OOM notifier with `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`) come
//!   back on the deflate queue and need nothing: they fault in again as the guest touches
//!   them. So a guest that needs memory is never starved by the balloon.
//! - **Free page reporting** (`VIRTIO_BALLOON_F_REPORTING`, Linux 5.7+): the guest lists free
//!   blocks (4 MiB each in Linux's default) on the reporting queue, and ember discards them
//!   too. That is what gives a guest's boot-time memory (its unpacked initramfs, freed caches)
//!   back to the host without anyone setting a target.
//!
//! Everything on the queues comes from the guest: a frame or range outside guest RAM, or not
//! on page boundaries, is skipped (and logged, rate-limited), never discarded in part, so a
//! hostile driver can only give back its own memory.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::EventOps;
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{Active, INT_CONFIG, Interrupt, Served, VirtioDevice, pop_chain, read_config_bytes};
use crate::sync::lock;

/// virtio_ids: memory balloon.
const DEVICE_TYPE: u32 = 5;
/// Feature bits (virtio 1.2, 5.5.3).
const F_DEFLATE_ON_OOM: u64 = 1 << 2;
const F_REPORTING: u64 = 1 << 5;
/// The balloon's unit: frame numbers are of 4 KiB pages, whatever the guest's page size.
const PAGE: u64 = 4096;
/// Descriptors per queue. Linux refuses a reporting queue with fewer than 32.
const QUEUE_SIZE: u16 = 256;
/// The queues, in the driver's order when reporting is negotiated and the statistics and
/// free-page-hint queues (which ember does not offer) are not: the driver numbers only the
/// queues that exist.
const INFLATE: usize = 0;
const DEFLATE: usize = 1;
const REPORTING: usize = 2;
/// The most frame numbers one inflate descriptor may list: Linux's own batch
/// (VIRTIO_BALLOON_ARRAY_PFNS_MAX). A longer list is refused whole, so a chain costs at most
/// 256 x 256 discards.
const PFNS_PER_DESC: usize = 256;
/// Chains served per notification; if the driver made more available, the device notifies
/// itself and serves them on a later turn of the event loop, so a guest that floods its
/// balloon cannot hold up the loop (Linux has one chain in flight per queue).
const CHAINS_PER_TURN: usize = 4;

/// The host's side of a balloon, shared with the front end (the control socket): the target
/// it asks for, what the guest says it holds, and what came back.
pub struct BalloonControl {
    mem_size: u64,
    deflate_on_oom: bool,
    free_page_reporting: bool,
    target_pages: AtomicU32,
    actual_pages: AtomicU32,
    /// Bytes given back through the inflate queue and through reports.
    inflated_bytes: AtomicU64,
    reported_bytes: AtomicU64,
    /// The device's interrupt line while the driver has it up, to say the target changed.
    interrupt: Mutex<Option<Arc<Interrupt>>>,
}

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a balloon of {asked} MiB is not less than the guest's {mem} MiB: ask for less than {mem}")]
pub struct TargetError {
    asked: u64,
    mem: u64,
}

/// What a balloon holds and has given back, in MiB (Firecracker's `target_mib` and
/// `actual_mib`, and ember's counts of what went back to the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BalloonStatus {
    /// The target: how much the host asks the guest for.
    pub target_mib: u64,
    /// How much the guest says is in the balloon.
    pub actual_mib: u64,
    /// The target in 4 KiB pages.
    pub target_pages: u32,
    /// What is in the balloon, in 4 KiB pages.
    pub actual_pages: u32,
    /// Whether the guest may deflate it when it runs out of memory.
    pub deflate_on_oom: bool,
    /// Whether the guest reports the memory it frees.
    pub free_page_reporting: bool,
    /// Memory given back to the host through the balloon, all told.
    pub inflated_mib: u64,
    /// Memory given back to the host through free page reports, all told.
    pub reported_mib: u64,
}

impl BalloonControl {
    /// A balloon for a guest of `mem_size` bytes, asking for `config.amount_mib` (checked
    /// against the guest's size by the configuration).
    pub fn new(config: &crate::config::Balloon, mem_size: u64) -> Self {
        let c = Self {
            mem_size,
            deflate_on_oom: config.deflate_on_oom,
            free_page_reporting: config.free_page_reporting,
            target_pages: AtomicU32::new(0),
            actual_pages: AtomicU32::new(0),
            inflated_bytes: AtomicU64::new(0),
            reported_bytes: AtomicU64::new(0),
            interrupt: Mutex::new(None),
        };
        c.target_pages
            .store(pages_of_mib(u64::from(config.amount_mib)), Ordering::SeqCst);
        c
    }

    /// Asks the guest for `mib` MiB (Firecracker's `PATCH /balloon`): the driver is told at
    /// once, if it is up, and inflates or deflates towards it.
    pub fn set_target_mib(&self, mib: u64) -> Result<(), TargetError> {
        let mem = self.mem_size >> 20;
        if mib >= mem {
            return Err(TargetError { asked: mib, mem });
        }
        self.target_pages.store(pages_of_mib(mib), Ordering::SeqCst);
        if let Some(i) = lock(&self.interrupt).as_ref() {
            i.raise(INT_CONFIG);
        }
        Ok(())
    }

    /// Where the balloon stands.
    pub fn status(&self) -> BalloonStatus {
        let target = self.target_pages.load(Ordering::SeqCst);
        let actual = self.actual_pages.load(Ordering::SeqCst);
        BalloonStatus {
            target_mib: (u64::from(target) * PAGE) >> 20,
            actual_mib: (u64::from(actual) * PAGE) >> 20,
            target_pages: target,
            actual_pages: actual,
            deflate_on_oom: self.deflate_on_oom,
            free_page_reporting: self.free_page_reporting,
            inflated_mib: self.inflated_bytes.load(Ordering::SeqCst) >> 20,
            reported_mib: self.reported_bytes.load(Ordering::SeqCst) >> 20,
        }
    }

    fn config(&self) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..4].copy_from_slice(&self.target_pages.load(Ordering::SeqCst).to_le_bytes());
        c[4..8].copy_from_slice(&self.actual_pages.load(Ordering::SeqCst).to_le_bytes());
        // free_page_hint_cmd_id (8) and poison_val (12): neither feature is offered.
        c
    }
}

fn pages_of_mib(mib: u64) -> u32 {
    u32::try_from((mib << 20) / PAGE).unwrap_or(u32::MAX)
}

/// What a snapshot keeps of a balloon beyond its transport: the target and what the guest
/// said it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Saved {
    target_pages: u32,
    actual_pages: u32,
    /// What went back to the host so far, so the statistics go on counting.
    #[serde(default)]
    inflated_bytes: u64,
    #[serde(default)]
    reported_bytes: u64,
}

/// A virtio-balloon device.
pub struct Balloon {
    control: Arc<BalloonControl>,
    active: Option<Active>,
    pfns: Vec<u8>,
}

impl Balloon {
    /// The device for `control`, whose features it offers.
    pub fn new(control: Arc<BalloonControl>) -> Self {
        Self {
            control,
            active: None,
            pfns: vec![0; PFNS_PER_DESC * 4],
        }
    }

    /// Serves every chain on queue `q`: inflate frames are discarded, reported ranges are
    /// discarded, deflated frames are just handed back.
    fn serve(&mut self, q: usize) -> Served {
        let Some(mut active) = self.active.take() else {
            return Ok(());
        };
        let result = self.serve_queue(&mut active, q);
        active.notify(q);
        self.active = Some(active);
        result
    }

    fn serve_queue(&mut self, active: &mut Active, q: usize) -> Served {
        let Active {
            mem,
            queues,
            log,
            queue_evts,
            ..
        } = active;
        let Some(queue) = queues.get_mut(q) else {
            return Ok(());
        };
        for turn in 0.. {
            if turn == CHAINS_PER_TURN {
                if let Some(e) = queue_evts.get(q) {
                    // Fails only when the counter is full: the loop comes back anyway.
                    let _ = e.write(1);
                }
                break;
            }
            let Some(chain) = pop_chain(queue, mem, q)? else {
                break;
            };
            let head = chain.head_index();
            let mut skipped = 0u64;
            for desc in chain {
                let (addr, len) = (desc.addr().0, u64::from(desc.len()));
                match q {
                    INFLATE => skipped += self.inflate(mem, addr, len),
                    REPORTING => match discard(mem, addr, len) {
                        Some(n) => {
                            self.control.reported_bytes.fetch_add(n, Ordering::SeqCst);
                        }
                        None => skipped += 1,
                    },
                    // Deflated pages fault in again when the guest touches them.
                    _ => {}
                }
            }
            if skipped > 0 {
                crate::guest_log!(
                    log,
                    log::Level::Warn,
                    "{skipped} balloon page(s) or ranges outside guest RAM or off page boundaries; left in place"
                );
            }
            if let Err(e) = queue.add_used(&*mem, head, 0) {
                crate::guest_log!(log, log::Level::Debug, "cannot return a buffer: {e}");
                return Ok(());
            }
        }
        Ok(())
    }

    /// Discards the 4 KiB frames listed in `len` bytes at `addr` (at most [`PFNS_PER_DESC`]
    /// of them); returns how many entries could not be (outside RAM), or 1 for a list that is
    /// too long or unreadable (then none is discarded).
    fn inflate(&mut self, mem: &GuestMemoryMmap, addr: u64, len: u64) -> u64 {
        let n = (len / 4) as usize;
        if n > PFNS_PER_DESC {
            return 1;
        }
        let buf = &mut self.pfns[..n * 4];
        if mem.read_slice(buf, GuestAddress(addr)).is_err() {
            return 1;
        }
        let mut skipped = 0;
        let mut give_back = |start: u64, pages: u64| match discard(mem, start * PAGE, pages * PAGE)
        {
            Some(bytes) => {
                self.control
                    .inflated_bytes
                    .fetch_add(bytes, Ordering::SeqCst);
            }
            None => skipped += pages,
        };
        // Contiguous frames go back in one call.
        let mut run: Option<(u64, u64)> = None;
        for pfn in buf
            .chunks_exact(4)
            .map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        {
            run = match run {
                Some((start, pages)) if start + pages == pfn => Some((start, pages + 1)),
                Some((start, pages)) => {
                    give_back(start, pages);
                    Some((pfn, 1))
                }
                None => Some((pfn, 1)),
            };
        }
        if let Some((start, pages)) = run {
            give_back(start, pages);
        }
        skipped
    }
}

/// Gives `len` bytes of guest RAM at `addr` back to the host; returns how many, or `None` if
/// the range is not whole pages inside one RAM region (then nothing is discarded).
fn discard(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Option<u64> {
    if len == 0 {
        return Some(0);
    }
    if !addr.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
        return None;
    }
    let count = usize::try_from(len).ok()?;
    let slice = mem.get_slice(GuestAddress(addr), count).ok()?;
    let ptr = slice.ptr_guard_mut().as_ptr();
    // SAFETY: the range is inside one of guest memory's mappings (get_slice checked it), which
    // live as long as `mem`; ember holds no references into guest RAM, which the guest owns
    // and may see zeroed at any time. DONTNEED only drops the pages: the mapping stays.
    let r = unsafe { libc::madvise(ptr.cast(), count, libc::MADV_DONTNEED) };
    (r == 0).then_some(len)
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn queues_in_use(&self, features: u64) -> usize {
        if features & F_REPORTING != 0 { 3 } else { 2 }
    }

    fn features(&self) -> u64 {
        (if self.control.deflate_on_oom {
            F_DEFLATE_ON_OOM
        } else {
            0
        }) | if self.control.free_page_reporting {
            F_REPORTING
        } else {
            0
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.control.config(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (bytes 4..8) is the driver's to write.
        let mut config = self.control.config();
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        let Some(end) = start.checked_add(data.len()).filter(|&e| e <= 8) else {
            return;
        };
        if start < 4 {
            return;
        }
        config[start..end].copy_from_slice(data);
        let actual = u32::from_le_bytes([config[4], config[5], config[6], config[7]]);
        self.control.actual_pages.store(actual, Ordering::SeqCst);
    }

    fn activate(&mut self, active: Active) {
        *lock(&self.control.interrupt) = Some(active.interrupt.clone());
        self.active = Some(active);
    }

    fn reset(&mut self) {
        *lock(&self.control.interrupt) = None;
        self.control.actual_pages.store(0, Ordering::SeqCst);
        self.active = None;
    }

    fn active_queues(&self) -> Option<&[Queue]> {
        self.active.as_ref().map(|a| a.queues.as_slice())
    }

    fn save_state(&self) -> Option<serde_json::Value> {
        serde_json::to_value(Saved {
            target_pages: self.control.target_pages.load(Ordering::SeqCst),
            actual_pages: self.control.actual_pages.load(Ordering::SeqCst),
            inflated_bytes: self.control.inflated_bytes.load(Ordering::SeqCst),
            reported_bytes: self.control.reported_bytes.load(Ordering::SeqCst),
        })
        .ok()
    }

    fn restore_state(&mut self, state: Option<&serde_json::Value>) -> Result<(), String> {
        let saved: Saved = state
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| format!("its balloon state is not one ember reads ({e})"))?
            .ok_or("it has no balloon state")?;
        if u64::from(saved.target_pages) * PAGE >= self.control.mem_size {
            return Err(format!(
                "its balloon target of {} pages is not less than the guest's {} MiB",
                saved.target_pages,
                self.control.mem_size >> 20
            ));
        }
        self.control
            .target_pages
            .store(saved.target_pages, Ordering::SeqCst);
        self.control
            .actual_pages
            .store(saved.actual_pages, Ordering::SeqCst);
        self.control
            .inflated_bytes
            .store(saved.inflated_bytes, Ordering::SeqCst);
        self.control
            .reported_bytes
            .store(saved.reported_bytes, Ordering::SeqCst);
        Ok(())
    }

    fn queue_event(&mut self, queue: usize, _ops: &mut EventOps) -> Served {
        match queue {
            INFLATE | DEFLATE | REPORTING => self.serve(queue),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn control(amount_mib: u32) -> Arc<BalloonControl> {
        let config = crate::config::Balloon {
            amount_mib,
            deflate_on_oom: true,
            free_page_reporting: true,
            ..Default::default()
        };
        Arc::new(BalloonControl::new(&config, 64 << 20))
    }

    #[test]
    fn discards_whole_pages_inside_ram_only() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.write_slice(&[0xaa; 8192], GuestAddress(0x4000))
            .unwrap();
        assert_eq!(discard(&mem, 0x4000, 4096), Some(4096));
        let mut got = [0u8; 2];
        mem.read_slice(&mut got, GuestAddress(0x4000)).unwrap();
        assert_eq!(got, [0, 0], "the host dropped the page");
        mem.read_slice(&mut got, GuestAddress(0x5000)).unwrap();
        assert_eq!(got, [0xaa, 0xaa], "the next page is untouched");
        for (addr, len) in [
            (0x4001, 4096),
            (0x4000, 100),
            (0xff000, 0x2000),
            (1 << 20, 4096),
            (u64::MAX - 4095, 4096),
        ] {
            assert_eq!(discard(&mem, addr, len), None, "{addr:#x}+{len:#x}");
        }
        mem.read_slice(&mut got, GuestAddress(0x5000)).unwrap();
        assert_eq!(got, [0xaa, 0xaa]);
    }

    #[test]
    fn inflate_lists_frames_and_skips_bad_ones() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.write_slice(&[0xaa; 0x4000], GuestAddress(0x10000))
            .unwrap();
        let pfns: Vec<u8> = [0x10u32, 0x11, 0x13, 0xffff_ffff]
            .iter()
            .flat_map(|p| p.to_le_bytes())
            .collect();
        mem.write_slice(&pfns, GuestAddress(0x1000)).unwrap();
        let c = control(0);
        let mut b = Balloon::new(c.clone());
        assert_eq!(
            b.inflate(&mem, 0x1000, 16),
            1,
            "the frame past RAM is skipped"
        );
        let byte = |a: u64| mem.read_obj::<u8>(GuestAddress(a)).unwrap();
        assert_eq!(
            (byte(0x10000), byte(0x11000), byte(0x12000), byte(0x13000)),
            (0, 0, 0xaa, 0)
        );
        assert_eq!(c.inflated_bytes.load(Ordering::SeqCst), 3 * PAGE);
        // A list outside RAM, and one longer than Linux ever sends (nothing of it is taken).
        assert_eq!(b.inflate(&mem, 0xfff_ffff0, 16), 1);
        mem.write_slice(&[0xaa; 4096], GuestAddress(0x12000))
            .unwrap();
        let long: Vec<u8> = (0..257u32).flat_map(|_| 0x12u32.to_le_bytes()).collect();
        mem.write_slice(&long, GuestAddress(0x2000)).unwrap();
        assert_eq!(b.inflate(&mem, 0x2000, 257 * 4), 1);
        assert_eq!(byte(0x12000), 0xaa);
    }

    #[test]
    fn config_target_and_actual() {
        let c = control(2);
        let mut b = Balloon::new(c.clone());
        let mut d = [0u8; 8];
        b.read_config(0, &mut d);
        assert_eq!(d, [0, 2, 0, 0, 0, 0, 0, 0], "2 MiB is 512 pages");
        // The driver may write `actual`, not `num_pages`.
        b.write_config(4, &300u32.to_le_bytes());
        b.write_config(0, &7u32.to_le_bytes());
        b.write_config(6, &[1, 0, 9]);
        assert_eq!(c.status().actual_pages, 300);
        assert_eq!(c.status().target_pages, 512);
        b.write_config(5, &[2]);
        assert_eq!(c.status().actual_pages, 0x22c);
        assert_eq!(
            c.set_target_mib(64).unwrap_err().to_string(),
            "a balloon of 64 MiB is not less than the guest's 64 MiB: ask for less than 64"
        );
        c.set_target_mib(3).unwrap();
        assert_eq!((c.status().target_mib, c.status().target_pages), (3, 768));
        assert_eq!(b.queues_in_use(F_REPORTING), 3);
        assert_eq!(b.queues_in_use(0), 2);
    }

    #[test]
    fn state_round_trips_and_bad_state_is_refused() {
        let c = control(4);
        let b = Balloon::new(c.clone());
        c.actual_pages.store(1024, Ordering::SeqCst);
        let saved = b.save_state().unwrap();
        let c2 = control(0);
        let mut b2 = Balloon::new(c2.clone());
        b2.restore_state(Some(&saved)).unwrap();
        assert_eq!(
            (c2.status().target_mib, c2.status().actual_pages),
            (4, 1024)
        );
        assert!(b2.restore_state(None).is_err());
        let huge = serde_json::json!({"target_pages": u32::MAX, "actual_pages": 0});
        assert!(b2.restore_state(Some(&huge)).is_err());
    }
}
