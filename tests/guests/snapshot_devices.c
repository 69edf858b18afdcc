/* A guest snapshotted with a virtio-blk write in flight and a vsock device up, for
   tests/snapshot.rs. Before it says ready (the byte 124 on port 0x3f0) it writes sector 2 of its
   disk, then makes a write of sector 3 available on the queue without notifying the device:
   to the device that is a request whose notification it has not seen yet, as when a snapshot
   comes between the guest's notify and the VMM's service. It brings vsock up with a receive
   buffer and an event buffer, prints "ready" and says ready.

   What runs after that runs only in a restored VM (the first process stops at ready): the
   staged write must complete without any further notification, sector 3 must read back, the
   vsock device must send a transport reset on the event queue (every stream the guest had is
   gone), and a connection to the host's port 1234 must be answered. Lines: "restored",
   "disk: ...", "vsock: ...", then "snapshot-devices: all ok", or "FAIL: ..." lines and
   "snapshot-devices: FAILED"; a reset of the VM either way. */

#include "freestanding.h"

#define QSIZE 8
enum { F_NEXT = 1, F_WRITE = 2 };
enum { T_IN = 0, T_OUT = 1 };
enum { OP_REQUEST = 1, OP_RESPONSE = 2 };

struct desc { u64 addr; u32 len; u16 flags; u16 next; };
struct avail { u16 flags; u16 idx; u16 ring[QSIZE]; };
struct used_elem { u32 id; u32 len; };
struct used { u16 flags; u16 idx; struct used_elem ring[QSIZE]; };
struct req_hdr { u32 type; u32 reserved; u64 sector; };

/* Queue q of the device whose rings start at `at`: 16 KiB each. */
static struct desc *q_desc(u64 at, int q) { return (struct desc *)(at + (u64)q * 0x4000); }
static struct avail *q_avail(u64 at, int q) { return (struct avail *)(at + (u64)q * 0x4000 + 0x1000); }
static volatile struct used *q_used(u64 at, int q) {
    return (volatile struct used *)(at + (u64)q * 0x4000 + 0x2000);
}

/* The handshake with `queues` queues at `at`; 0 if the device refused it. */
static int bring_up(u64 b, u64 at, u32 queues) {
    R(b, STATUS) = 0;
    R(b, STATUS) = S_ACK;
    R(b, STATUS) = S_ACK | S_DRIVER;
    R(b, DEV_FEATURES_SEL) = 1;
    if (!(R(b, DEV_FEATURES) & 1)) return 0;
    R(b, DRV_FEATURES_SEL) = 0;
    R(b, DRV_FEATURES) = 0;
    R(b, DRV_FEATURES_SEL) = 1;
    R(b, DRV_FEATURES) = 1;
    R(b, STATUS) = S_ACK | S_DRIVER | S_FEATURES_OK;
    if (!(R(b, STATUS) & S_FEATURES_OK)) return 0;
    for (u32 q = 0; q < queues; q++) {
        u64 m = (u64)q_desc(at, (int)q);
        memset((void *)m, 0, 0x4000);
        R(b, QUEUE_SEL) = q;
        if (R(b, QUEUE_NUM_MAX) < QSIZE) return 0;
        R(b, QUEUE_NUM) = QSIZE;
        R(b, DESC_LO) = (u32)m;
        R(b, DESC_HI) = 0;
        R(b, AVAIL_LO) = (u32)(m + 0x1000);
        R(b, AVAIL_HI) = 0;
        R(b, USED_LO) = (u32)(m + 0x2000);
        R(b, USED_HI) = 0;
        R(b, QUEUE_READY) = 1;
    }
    R(b, STATUS) = S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;
    return 1;
}

/* Makes the chain at descriptor `head` of queue q available; notifies if `notify`. */
static void offer(u64 b, u64 at, int q, u16 head, int notify) {
    struct avail *a = q_avail(at, q);
    a->ring[a->idx % QSIZE] = head;
    __asm__ volatile("" ::: "memory");
    a->idx++;
    __asm__ volatile("mfence" ::: "memory");
    if (notify) R(b, QUEUE_NOTIFY) = (u32)q;
}

/* Waits (about 10^10 TSC ticks) for queue q's used index to reach `want`. */
static int wait_used(u64 at, int q, u16 want) {
    u64 deadline = rdtsc() + 10000000000ULL;
    while (q_used(at, q)->idx != want) {
        if (rdtsc() > deadline) return 0;
    }
    __asm__ volatile("mfence" ::: "memory");
    return 1;
}

/* ---- the disk: rings at 2 MiB, request buffers after them ---- */
#define BLK 0x200000ULL
#define BLK_HDR(n) ((struct req_hdr *)(BLK + 0x8000 + (n) * 0x1000))
#define BLK_DATA(n) ((u8 *)(BLK + 0xa000 + (n) * 0x1000))
#define BLK_STATUS(n) ((volatile u8 *)(BLK + 0xc000 + (n) * 0x100))
static u16 blk_used;

/* Request `n`, 0 or 1 (descriptors 3n..3n+2): header, 512 bytes of data, status. */
static void blk_request(int n, u32 type, u64 sector) {
    struct desc *d = q_desc(BLK, 0);
    u16 i = (u16)(3 * n);
    BLK_HDR(n)->type = type;
    BLK_HDR(n)->sector = sector;
    *BLK_STATUS(n) = 0xff;
    d[i] = (struct desc){(u64)BLK_HDR(n), sizeof(struct req_hdr), F_NEXT, (u16)(i + 1)};
    d[i + 1] = (struct desc){(u64)BLK_DATA(n), 512, (u16)(F_NEXT | (type == T_IN ? F_WRITE : 0)), (u16)(i + 2)};
    d[i + 2] = (struct desc){(u64)BLK_STATUS(n), 1, F_WRITE, 0};
}

static int blk_sync(u64 b, int n, u32 type, u64 sector) {
    blk_request(n, type, sector);
    offer(b, BLK, 0, (u16)(3 * n), 1);
    if (!wait_used(BLK, 0, (u16)(blk_used + 1))) return -1;
    blk_used++;
    return *BLK_STATUS(n);
}

/* ---- vsock: rings at 3 MiB; receive, send and event buffers after them ---- */
#define VS 0x300000ULL
#define VS_RX 0x310000ULL
#define VS_TX 0x311000ULL
#define VS_EV 0x312000ULL
static void put16(u64 at, u16 v) { *(volatile u16 *)at = v; }
static void put32(u64 at, u32 v) { *(volatile u32 *)at = v; }
static void put64(u64 at, u64 v) { *(volatile u64 *)at = v; }

void main_c(u8 *boot_params) {
    u64 bases[8], blk = 0, vs = 0;
    int n = find_virtio(cmdline_of(boot_params), bases, 8);
    for (int i = 0; i < n; i++) {
        if (R(bases[i], MAGIC) != 0x74726976) continue;
        if (R(bases[i], DEVICE_ID) == 2) blk = bases[i];
        if (R(bases[i], DEVICE_ID) == 19) vs = bases[i];
    }
    if (!blk || !vs) {
        fail("want a disk and a vsock device");
        reset();
    }
    if (!bring_up(blk, BLK, 1)) fail("disk bring-up");
    memset(BLK_DATA(0), 0, 512);
    memcpy(BLK_DATA(0), "before the snapshot", 20);
    if (blk_sync(blk, 0, T_OUT, 2) != 0) fail("the write before the snapshot");
    /* Staged: available, not notified. */
    memset(BLK_DATA(1), 0, 512);
    memcpy(BLK_DATA(1), "across the snapshot", 20);
    blk_request(1, T_OUT, 3);
    offer(blk, BLK, 0, 3, 0);

    if (!bring_up(vs, VS, 3)) fail("vsock bring-up");
    memset((void *)VS_RX, 0, 0x3000);
    q_desc(VS, 0)[0] = (struct desc){VS_RX, 0x1000, F_WRITE, 0};
    offer(vs, VS, 0, 0, 1);
    put32(VS_EV, 0xffffffff);
    q_desc(VS, 2)[0] = (struct desc){VS_EV, 8, F_WRITE, 0};
    offer(vs, VS, 2, 0, 1);

    puts("ready\n");
    outb(0x3f0, 124);
    puts("restored\n");

    if (!wait_used(BLK, 0, (u16)(blk_used + 1))) {
        fail("the write made before the snapshot was never served");
    } else {
        blk_used++;
        if (*BLK_STATUS(1) != 0) fail("the write across the snapshot failed");
        else puts("disk: the write across the snapshot completed\n");
    }
    memset(BLK_DATA(0), 0, 512);
    if (blk_sync(blk, 0, T_IN, 3) != 0) fail("reading sector 3");
    else if (!starts((const char *)BLK_DATA(0), "across the snapshot")) fail("sector 3 reads back wrong");
    else puts("disk: sector 3 reads back\n");

    if (!wait_used(VS, 2, 1)) fail("no transport reset on the event queue");
    else if (*(volatile u32 *)VS_EV != 0) fail("the event is no transport reset");
    else puts("vsock: transport reset\n");
    u64 cid = *(volatile u64 *)(vs + CONFIG);
    puts("vsock: cid ");
    putdec(cid);
    puts("\n");
    /* A connection request to the host (CID 2), port 1234, from guest port 5000. */
    memset((void *)VS_TX, 0, 44);
    put64(VS_TX + 0, cid);
    put64(VS_TX + 8, 2);
    put32(VS_TX + 16, 5000);
    put32(VS_TX + 20, 1234);
    put16(VS_TX + 28, 1);
    put16(VS_TX + 30, OP_REQUEST);
    put32(VS_TX + 36, 65536);
    q_desc(VS, 1)[0] = (struct desc){VS_TX, 44, 0, 0};
    offer(vs, VS, 1, 0, 1);
    if (!wait_used(VS, 0, 1)) fail("no answer to the connection request");
    else {
        u16 op = *(volatile u16 *)(VS_RX + 30);
        puts("vsock: answer op ");
        putdec(op);
        puts("\n");
        if (op != OP_RESPONSE) fail("the host did not accept the connection");
        else puts("vsock: connected to the host\n");
    }
    puts(failures ? "snapshot-devices: FAILED\n" : "snapshot-devices: all ok\n");
    reset();
}

__attribute__((naked, section(".text.start"))) void _start(void) {
    __asm__ volatile("mov %rsi, %rdi\n call main_c\n 1: hlt\n jmp 1b");
}
