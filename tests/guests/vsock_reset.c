/* A guest that resets its vsock device while a host connection is open, twice: it brings the
   device up with one receive buffer, says "vsock-reset: up N", waits for the connection request
   a host client's "CONNECT port" line makes ember send, says "vsock-reset: request N", then
   writes 0 to the status register (a reset, as a driver unloading or a kernel rebooting does)
   and says "vsock-reset: reset N". ember must close that host connection and keep serving:
   the second round needs a device that works after the reset. Then "vsock-reset: done" and a
   reset of the VM (a clean stop). A "FAIL: ..." line and the same stop on anything else. */

#include "freestanding.h"

#define QSIZE 8
#define VIRTIO_ID_VSOCK 19
enum { F_WRITE = 2 };
enum { OP_REQUEST = 1 };

struct desc { u64 addr; u32 len; u16 flags; u16 next; };
struct avail { u16 flags; u16 idx; u16 ring[QSIZE]; };
struct used_elem { u32 id; u32 len; };
struct used { u16 flags; u16 idx; struct used_elem ring[QSIZE]; };

/* Queue q's rings, identity-mapped from 2 MiB up, 16 KiB each; the receive buffer after. */
static u64 ring(int q) { return 0x200000 + (u64)q * 0x4000; }
#define RX_BUF 0x210000

static void fatal(const char *what) {
    puts("FAIL: ");
    puts(what);
    puts("\n");
    reset();
}

/* Status 0, the handshake, three queues (rx, tx, event), DRIVER_OK, one receive buffer. */
static void bring_up(u64 b) {
    R(b, STATUS) = 0;
    R(b, STATUS) = S_ACK;
    R(b, STATUS) = S_ACK | S_DRIVER;
    R(b, DEV_FEATURES_SEL) = 1;
    if (!(R(b, DEV_FEATURES) & 1)) fatal("no VERSION_1");
    R(b, DRV_FEATURES_SEL) = 0;
    R(b, DRV_FEATURES) = 0;
    R(b, DRV_FEATURES_SEL) = 1;
    R(b, DRV_FEATURES) = 1;
    R(b, STATUS) = S_ACK | S_DRIVER | S_FEATURES_OK;
    if (!(R(b, STATUS) & S_FEATURES_OK)) fatal("FEATURES_OK refused");
    for (u32 q = 0; q < 3; q++) {
        u64 m = ring((int)q);
        memset((void *)m, 0, 0x4000);
        R(b, QUEUE_SEL) = q;
        if (R(b, QUEUE_NUM_MAX) < QSIZE) fatal("queue too small");
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
    memset((void *)RX_BUF, 0, 0x1000);
    struct desc *d = (struct desc *)ring(0);
    struct avail *a = (struct avail *)(ring(0) + 0x1000);
    d[0].addr = RX_BUF;
    d[0].len = 0x1000;
    d[0].flags = F_WRITE;
    a->ring[0] = 0;
    __asm__ volatile("" ::: "memory");
    a->idx = 1;
    __asm__ volatile("mfence" ::: "memory");
    R(b, QUEUE_NOTIFY) = 0;
}

/* Waits (about 10^11 TSC ticks at most) for the receive buffer to come back; its op. */
static u16 wait_packet(void) {
    volatile struct used *u = (volatile struct used *)(ring(0) + 0x2000);
    u64 deadline = rdtsc() + 100000000000ULL;
    while (u->idx == 0) {
        if (rdtsc() > deadline) fatal("no packet from the host");
    }
    __asm__ volatile("mfence" ::: "memory");
    return *(volatile u16 *)(RX_BUF + 30);
}

/* Entered in 64-bit long mode, %rsi = boot_params, stack at 0x8ff0. */
void main_c(u8 *boot_params) {
    u64 bases[8];
    int n = find_virtio(cmdline_of(boot_params), bases, 8);
    u64 b = 0;
    for (int i = 0; i < n; i++) {
        if (R(bases[i], MAGIC) == 0x74726976 && R(bases[i], DEVICE_ID) == VIRTIO_ID_VSOCK) b = bases[i];
    }
    if (!b) fatal("no vsock device");
    for (u64 round = 1; round <= 2; round++) {
        bring_up(b);
        puts("vsock-reset: up ");
        putdec(round);
        puts("\n");
        u16 op = wait_packet();
        if (op != OP_REQUEST) fatal("the packet is no connection request");
        puts("vsock-reset: request ");
        putdec(round);
        puts("\n");
        R(b, STATUS) = 0;
        if (R(b, STATUS) != 0) fatal("the status is not 0 after the reset");
        puts("vsock-reset: reset ");
        putdec(round);
        puts("\n");
    }
    puts("vsock-reset: done\n");
    reset();
}

__attribute__((naked, section(".text.start"))) void _start(void) {
    __asm__ volatile("mov %rsi, %rdi\n call main_c\n 1: hlt\n jmp 1b");
}
