/* A freestanding guest that drives ember's virtio-balloon itself, polling (no interrupts):
   1. free page reporting: it fills 1 MiB, reports it, and checks that it reads back as zero
      pages (the host discarded them);
   2. hostile reports: a range outside RAM, one off page boundaries, one far too long; each is
      handed back, and the page next to the unaligned range keeps its contents;
   3. inflate: it puts num_pages (the host's target) frames on the inflate queue, with a
      frame outside RAM and a list too long after them, checks they read back as zero, and
      sets `actual`;
   4. it waits (bounded) for the host to change the target to 0 (`PATCH /balloon`), checks
      the configuration interrupt was raised, deflates, and sets `actual` to 0.
   Lines the test looks for: "report: ...", "inflate: ...", "deflate: ...", "balloon: all ok". */

#include "freestanding.h"

enum { F_NEXT = 1, F_WRITE = 2 };
enum { F_DEFLATE_ON_OOM = 1 << 2, F_REPORTING = 1 << 5 };
enum { INFLATE = 0, DEFLATE = 1, REPORTING = 2, NQ = 3 };
enum { INT_STATUS = 0x60, INT_ACK = 0x64 };
#define QSIZE 8
#define MIB 0x100000ULL
/* What the guest gives back: 1 MiB reported, 1 MiB ballooned, a page for the unaligned
   report; the frame list. */
#define REPORTED (8 * MIB)
#define NEIGHBOUR (10 * MIB)
#define BALLOONED (12 * MIB)
#define PFN_LIST (0x300000ULL)

struct desc { u64 addr; u32 len; u16 flags; u16 next; };
struct avail { u16 flags; u16 idx; u16 ring[QSIZE]; };
struct used_elem { u32 id; u32 len; };
struct used { u16 flags; u16 idx; struct used_elem ring[QSIZE]; };

struct queue {
    struct desc *desc;
    struct avail *avail;
    volatile struct used *used;
    u16 last_used;
};

static u64 base;
static struct queue qs[NQ];

static int bring_up(void) {
    if (R(base, MAGIC) != 0x74726976 || R(base, VERSION) != 2 || R(base, DEVICE_ID) != 5) return -1;
    R(base, STATUS) = 0;
    R(base, STATUS) = S_ACK;
    R(base, STATUS) = S_ACK | S_DRIVER;
    R(base, DEV_FEATURES_SEL) = 0;
    u32 lo = R(base, DEV_FEATURES);
    R(base, DEV_FEATURES_SEL) = 1;
    if (!(R(base, DEV_FEATURES) & 1)) return -1; /* VERSION_1 */
    if ((lo & (F_DEFLATE_ON_OOM | F_REPORTING)) != (F_DEFLATE_ON_OOM | F_REPORTING)) return -1;
    R(base, DRV_FEATURES_SEL) = 0;
    R(base, DRV_FEATURES) = F_DEFLATE_ON_OOM | F_REPORTING;
    R(base, DRV_FEATURES_SEL) = 1;
    R(base, DRV_FEATURES) = 1;
    R(base, STATUS) = S_ACK | S_DRIVER | S_FEATURES_OK;
    if (!(R(base, STATUS) & S_FEATURES_OK)) return -1;
    for (int i = 0; i < NQ; i++) {
        u64 m = 0x200000 + (u64)i * 0x10000;
        memset((void *)m, 0, 0x10000);
        qs[i].desc = (struct desc *)m;
        qs[i].avail = (struct avail *)(m + 0x1000);
        qs[i].used = (volatile struct used *)(m + 0x2000);
        qs[i].last_used = 0;
        R(base, QUEUE_SEL) = (u32)i;
        if (R(base, QUEUE_NUM_MAX) < QSIZE) return -1;
        R(base, QUEUE_NUM) = QSIZE;
        R(base, DESC_LO) = (u32)(u64)qs[i].desc;
        R(base, DESC_HI) = 0;
        R(base, AVAIL_LO) = (u32)(u64)qs[i].avail;
        R(base, AVAIL_HI) = 0;
        R(base, USED_LO) = (u32)(u64)qs[i].used;
        R(base, USED_HI) = 0;
        R(base, QUEUE_READY) = 1;
    }
    R(base, STATUS) = S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;
    return 0;
}

/* Offers the chain at descriptor 0 of queue `q` and waits for it to come back; 0 if it did
   within about 10^10 TSC ticks. */
static int submit(int q) {
    struct queue *x = &qs[q];
    x->avail->ring[x->avail->idx % QSIZE] = 0;
    __asm__ volatile("" ::: "memory");
    x->avail->idx++;
    __asm__ volatile("mfence" ::: "memory");
    R(base, QUEUE_NOTIFY) = (u32)q;
    u64 deadline = rdtsc() + 10000000000ULL;
    while (x->used->idx == x->last_used)
        if (rdtsc() > deadline) return -1;
    x->last_used++;
    return 0;
}

static void fill(u64 addr, u64 len, u8 v) { memset((void *)addr, v, len); }

/* How many of the pages in [addr, addr+len) read as zero (their first and last bytes). */
static u64 zero_pages(u64 addr, u64 len) {
    u64 n = 0;
    for (u64 p = addr; p < addr + len; p += 4096)
        if (*(volatile u8 *)p == 0 && *(volatile u8 *)(p + 4095) == 0) n++;
    return n;
}

static u32 config(u64 off) { return R(base, CONFIG + off); }

static void report(void) {
    fill(REPORTED, MIB, 0xaa);
    qs[REPORTING].desc[0] = (struct desc){REPORTED, (u32)MIB, F_WRITE, 0};
    if (submit(REPORTING)) fail("the report did not come back");
    u64 z = zero_pages(REPORTED, MIB);
    puts("report: ");
    putdec(z);
    puts(" of 256 pages given back\n");
    if (z != 256) fail("reported pages still hold their contents");
}

static void hostile(void) {
    fill(NEIGHBOUR, 2 * 4096, 0xbb);
    /* Outside RAM, off page boundaries (it would cover the neighbour's first page), and far
       longer than RAM, in one chain. */
    qs[REPORTING].desc[0] = (struct desc){0xffffffff0000ULL, (u32)MIB, F_WRITE | F_NEXT, 1};
    qs[REPORTING].desc[1] = (struct desc){NEIGHBOUR + 1, 4096, F_WRITE | F_NEXT, 2};
    qs[REPORTING].desc[2] = (struct desc){16 * MIB, 0xfffff000u, F_WRITE, 0};
    if (submit(REPORTING)) fail("a hostile report did not come back");
    u64 kept = *(volatile u8 *)NEIGHBOUR == 0xbb && *(volatile u8 *)(NEIGHBOUR + 4096) == 0xbb;
    puts("hostile: reports handed back, neighbour ");
    puts(kept ? "kept\n" : "LOST\n");
    if (!kept) fail("an unaligned report discarded a page");
}

static void inflate(void) {
    u32 target = config(0);
    puts("inflate: target ");
    putdec(target);
    puts(" pages\n");
    if (target != 256) fail("the target is not --balloon's 1 MiB");
    fill(BALLOONED, MIB, 0xcc);
    u32 *pfns = (u32 *)PFN_LIST;
    for (u32 i = 0; i < 256; i++) pfns[i] = (u32)(BALLOONED >> 12) + i;
    /* A second list: a frame outside RAM (skipped, never fatal), and a third longer than
       Linux's 256 (refused whole). */
    pfns[256] = 0xfffffff0u;
    qs[INFLATE].desc[0] = (struct desc){PFN_LIST, 256 * 4, F_NEXT, 1};
    qs[INFLATE].desc[1] = (struct desc){PFN_LIST + 256 * 4, 4, F_NEXT, 2};
    qs[INFLATE].desc[2] = (struct desc){PFN_LIST, 512 * 4, 0, 0};
    if (submit(INFLATE)) fail("the inflate list did not come back");
    u64 z = zero_pages(BALLOONED, MIB);
    R(base, CONFIG + 4) = 256; /* actual */
    puts("inflate: ");
    putdec(z);
    puts(" of 256 pages given back\n");
    if (z != 256) fail("ballooned pages still hold their contents");
}

static void deflate(void) {
    /* The host changes the target (the test's PATCH /balloon): a configuration interrupt. */
    u64 deadline = rdtsc() + 300000000000ULL; /* minutes: the test's own limits end it sooner */
    while (config(0) != 0)
        if (rdtsc() > deadline) {
            fail("the target never changed to 0");
            return;
        }
    u32 status = R(base, INT_STATUS);
    R(base, INT_ACK) = status;
    puts("deflate: target 0, configuration interrupt ");
    puts(status & 2 ? "raised\n" : "MISSING\n");
    if (!(status & 2)) fail("no configuration interrupt");
    qs[DEFLATE].desc[0] = (struct desc){PFN_LIST, 256 * 4, 0, 0};
    if (submit(DEFLATE)) fail("the deflate list did not come back");
    R(base, CONFIG + 4) = 0;
    /* The pages are the guest's again. */
    fill(BALLOONED, MIB, 0xdd);
    puts("deflate: pages back in use\n");
}

/* Entered in 64-bit long mode, %rsi = boot_params. */
void main_c(u8 *boot_params) {
    puts("balloon guest\n");
    u64 bases[4];
    if (find_virtio(cmdline_of(boot_params), bases, 4) != 1) {
        fail("expected one virtio device");
    } else {
        base = bases[0];
        if (bring_up()) {
            fail("bringing the balloon up");
        } else {
            report();
            hostile();
            inflate();
            deflate();
        }
    }
    puts(failures ? "balloon: FAILED\n" : "balloon: all ok\n");
    reset();
}

__attribute__((naked, section(".text.start"))) void _start(void) {
    __asm__ volatile("mov %rsi, %rdi\n call main_c\n 1: hlt\n jmp 1b");
}
