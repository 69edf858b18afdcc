/* A freestanding guest that drives virtio-mmio block devices itself, as a driver would: it
   finds them on the kernel command line (virtio_mmio.device=4K@ADDR:IRQ, the entries ember adds),
   checks the registers, negotiates features, sets up a split queue, and sends requests,
   polling the used ring (no interrupts). With the word "hostile" on the command line it first
   sends malformed chains, which the device must survive: each answered with an error or handed
   back, never a hang, and the device still serving good requests afterwards.

   Expected disks: the first writable, its sector 0 starting "EMBERDISK"; the second (if any)
   read-only. Output lines the test looks for: "disk N: ...", "virtio-blk: all ok". */

#include "freestanding.h"

enum { F_NEXT = 1, F_WRITE = 2 };
enum { T_IN = 0, T_OUT = 1, T_FLUSH = 4, T_GET_ID = 8 };
#define QSIZE 8

struct desc { u64 addr; u32 len; u16 flags; u16 next; };
struct avail { u16 flags; u16 idx; u16 ring[QSIZE]; };
struct used_elem { u32 id; u32 len; };
struct used { u16 flags; u16 idx; struct used_elem ring[QSIZE]; };
struct req_hdr { u32 type; u32 reserved; u64 sector; };

/* Per-device memory, identity-mapped: 64 KiB apart from 2 MiB up. */
struct dev {
    u64 base;
    struct desc *desc;
    struct avail *avail;
    volatile struct used *used;
    struct req_hdr *hdr;
    u8 *data;
    volatile u8 *status;
    u16 last_used;
};

static void setup_mem(struct dev *d, int n) {
    u64 m = 0x200000 + (u64)n * 0x10000;
    memset((void *)m, 0, 0x10000);
    d->desc = (struct desc *)m;
    d->avail = (struct avail *)(m + 0x1000);
    d->used = (volatile struct used *)(m + 0x2000);
    d->hdr = (struct req_hdr *)(m + 0x3000);
    d->data = (u8 *)(m + 0x4000);
    d->status = (volatile u8 *)(m + 0x5000);
    d->last_used = 0;
}

/* Brings the device up; returns its device feature word 0, or -1. */
static long bring_up(struct dev *d) {
    u64 b = d->base;
    if (R(b, MAGIC) != 0x74726976 || R(b, VERSION) != 2 || R(b, DEVICE_ID) != 2) return -1;
    R(b, STATUS) = 0;
    R(b, STATUS) = S_ACK;
    R(b, STATUS) = S_ACK | S_DRIVER;
    R(b, DEV_FEATURES_SEL) = 0;
    u32 lo = R(b, DEV_FEATURES);
    R(b, DEV_FEATURES_SEL) = 1;
    u32 hi = R(b, DEV_FEATURES);
    if (!(hi & 1)) return -1; /* VERSION_1 */
    R(b, DRV_FEATURES_SEL) = 0;
    R(b, DRV_FEATURES) = lo & ((1 << 9) | (1 << 5)); /* FLUSH, RO */
    R(b, DRV_FEATURES_SEL) = 1;
    R(b, DRV_FEATURES) = 1;
    R(b, STATUS) = S_ACK | S_DRIVER | S_FEATURES_OK;
    if (!(R(b, STATUS) & S_FEATURES_OK)) return -1;
    R(b, QUEUE_SEL) = 0;
    if (R(b, QUEUE_NUM_MAX) < QSIZE) return -1;
    R(b, QUEUE_NUM) = QSIZE;
    R(b, DESC_LO) = (u32)(u64)d->desc;
    R(b, DESC_HI) = 0;
    R(b, AVAIL_LO) = (u32)(u64)d->avail;
    R(b, AVAIL_HI) = 0;
    R(b, USED_LO) = (u32)(u64)d->used;
    R(b, USED_HI) = 0;
    R(b, QUEUE_READY) = 1;
    R(b, STATUS) = S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;
    return lo;
}

/* Offers the chain at descriptor 0 and waits for the device to hand it back; returns the
   used length, or -1 if nothing came back within about 10^10 TSC ticks. */
static long submit(struct dev *d) {
    d->avail->ring[d->avail->idx % QSIZE] = 0;
    __asm__ volatile("" ::: "memory");
    d->avail->idx++;
    __asm__ volatile("mfence" ::: "memory");
    R(d->base, QUEUE_NOTIFY) = 0;
    u64 deadline = rdtsc() + 10000000000ULL;
    while (d->used->idx == d->last_used) {
        if (rdtsc() > deadline) return -1;
    }
    long len = d->used->ring[d->last_used % QSIZE].len;
    d->last_used++;
    return len;
}

/* A three-descriptor request: header, data (len bytes, written by the device if in), status. */
static long request(struct dev *d, u32 type, u64 sector, u32 len, int in) {
    d->hdr->type = type;
    d->hdr->sector = sector;
    *d->status = 0xff;
    int n = 0;
    d->desc[n] = (struct desc){(u64)d->hdr, sizeof(struct req_hdr), F_NEXT, 1};
    n++;
    if (len) {
        d->desc[n] = (struct desc){(u64)d->data, len, (u16)(F_NEXT | (in ? F_WRITE : 0)), 2};
        n++;
    } else {
        d->desc[0].next = 2;
    }
    d->desc[2] = (struct desc){(u64)d->status, 1, F_WRITE, 0};
    if (submit(d) < 0) return -2;
    return *d->status;
}

static void hostile(struct dev *d) {
    /* A notification before the queue is set up. */
    R(d->base, QUEUE_NOTIFY) = 0;
    bring_up(d);
    /* A descriptor loop: 0 -> 1 -> 0 ... */
    d->desc[0] = (struct desc){(u64)d->hdr, 16, F_NEXT, 1};
    d->desc[1] = (struct desc){(u64)d->data, 512, F_NEXT | F_WRITE, 0};
    long r = submit(d);
    puts("hostile: loop -> used len ");
    putdec((u64)r);
    puts("\n");
    if (r < 0) fail("the device hung on a descriptor loop");
    /* Addresses outside guest memory. */
    d->desc[0] = (struct desc){(u64)d->hdr, 16, F_NEXT, 1};
    d->desc[1] = (struct desc){0xffffffff0000ULL, 512, F_NEXT | F_WRITE, 2};
    d->desc[2] = (struct desc){(u64)d->status, 1, F_WRITE, 0};
    d->hdr->type = T_IN;
    d->hdr->sector = 0;
    r = submit(d);
    puts("hostile: outside memory -> used len ");
    putdec((u64)r);
    puts("\n");
    if (r < 0) fail("the device hung on an address outside memory");
    /* A descriptor index past the table. */
    d->desc[0] = (struct desc){(u64)d->hdr, 16, F_NEXT, 200};
    r = submit(d);
    if (r < 0) fail("the device hung on a bad descriptor index");
    /* A request far past the end of the disk, and an enormous one. */
    if (request(d, T_IN, 1ULL << 40, 512, 1) != 1) fail("a read past the end did not fail");
    d->desc[1].len = 0x7fffffff;
    if (submit(d) < 0) fail("the device hung on an oversized request");
    /* An unknown request type. */
    if (request(d, 0x99, 0, 0, 0) != 2) fail("an unknown request was not UNSUPP");
    puts("hostile: survived\n");
}

static void test_disk(int n, u64 base, int want_ro, int hostile_mode) {
    struct dev d;
    d.base = base;
    setup_mem(&d, n);
    puts("disk ");
    putdec((u64)n);
    puts(": at ");
    puthex(base);
    puts("\n");
    if (hostile_mode) hostile(&d);
    setup_mem(&d, n);
    long features = bring_up(&d);
    if (features < 0) {
        fail("device bring-up");
        return;
    }
    int ro = (features >> 5) & 1;
    u64 sectors = *(volatile u64 *)(base + CONFIG);
    puts("disk ");
    putdec((u64)n);
    puts(": capacity ");
    putdec(sectors);
    puts(" sectors, ");
    puts(ro ? "read-only\n" : "writable\n");
    if (ro != want_ro) fail("read-only bit");
    if (request(&d, T_IN, 0, 512, 1) != 0) fail("reading sector 0");
    if (!starts((const char *)d.data, "EMBERDISK")) fail("sector 0 content");
    puts("disk ");
    putdec((u64)n);
    puts(": sector 0 says ");
    for (int i = 0; i < 12 && d.data[i] >= ' '; i++) outb(COM1, d.data[i]);
    puts("\n");
    memset(d.data, 0, 512);
    if (request(&d, T_GET_ID, 0, 64, 1) != 0) fail("GET_ID");
    puts("disk ");
    putdec((u64)n);
    puts(": id ");
    puts((const char *)d.data);
    puts("\n");
    memset(d.data, 0, 512);
    memcpy(d.data, "written by the guest", 21);
    long w = request(&d, T_OUT, 1, 512, 0);
    long f = request(&d, T_FLUSH, 0, 0, 0);
    puts("disk ");
    putdec((u64)n);
    puts(": write status ");
    putdec((u64)w);
    puts(", flush status ");
    putdec((u64)f);
    puts("\n");
    if (ro ? w != 1 : (w != 0 || f != 0)) fail("write/flush status");
    /* Read the sector back. */
    memset(d.data, 0, 512);
    if (request(&d, T_IN, 1, 512, 1) != 0) fail("reading sector 1");
    int back = starts((const char *)d.data, "written by the guest");
    if (ro ? back : !back) fail("sector 1 content after the write");
}

/* Entered in 64-bit long mode, %rsi = boot_params, stack at 0x8ff0. */
void main_c(u8 *boot_params) {
    puts("virtio-blk guest\n");
    const char *cmdline = cmdline_of(boot_params);
    int hostile_mode = 0;
    for (const char *p = cmdline; *p; p++)
        if (starts(p, "hostile")) hostile_mode = 1;
    u64 bases[4];
    int n = find_virtio(cmdline, bases, 4);
    if (n == 0) fail("no virtio_mmio.device= on the command line");
    for (int i = 0; i < n; i++) test_disk(i, bases[i], i == 1, hostile_mode && i == 0);
    puts(failures ? "virtio-blk: FAILED\n" : "virtio-blk: all ok\n");
    reset();
}

__attribute__((naked, section(".text.start"))) void _start(void) {
    __asm__ volatile("mov %rsi, %rdi\n call main_c\n 1: hlt\n jmp 1b");
}
