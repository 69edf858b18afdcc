/* A hostile guest: it brings up every virtio-mmio device on the kernel command line, whatever
   its kind, gives each of its queues an available ring whose index (0x8000) runs ahead of the
   queue's size, and then notifies every queue in a loop, forever. No device can serve such a
   ring: ember must stop serving it (DEVICE_NEEDS_RESET), log it a bounded number of times, and
   stay stoppable (its --timeout, a signal) whatever its stdout and stderr readers do.

   Output: "virtio-flood: N devices, Q queues broken", then "virtio-flood: DEVICE_NEEDS_RESET
   on every device" once each device's status says so, then nothing (it keeps notifying). */

#include "freestanding.h"

#define QSIZE 8
#define MAX_DEVICES 8
#define MAX_QUEUES 4

static u32 status_of(u64 b) { return R(b, STATUS); }

/* Brings device `b` up with every queue it has (up to MAX_QUEUES) broken; returns how many. */
static int break_queues(u64 b, int n) {
    if (R(b, MAGIC) != 0x74726976 || R(b, VERSION) != 2) return 0;
    R(b, STATUS) = 0;
    R(b, STATUS) = S_ACK | S_DRIVER;
    R(b, DRV_FEATURES_SEL) = 1;
    R(b, DRV_FEATURES) = 1; /* VERSION_1, nothing else */
    R(b, STATUS) = S_ACK | S_DRIVER | S_FEATURES_OK;
    int queues = 0;
    for (u32 q = 0; q < MAX_QUEUES; q++) {
        R(b, QUEUE_SEL) = q;
        if (R(b, QUEUE_NUM_MAX) < QSIZE) break;
        u64 m = 0x200000 + (u64)(n * MAX_QUEUES + (int)q) * 0x4000;
        memset((void *)m, 0, 0x4000);
        /* The available ring's index, far beyond its 8 entries. */
        *(volatile u16 *)(m + 0x1000 + 2) = 0x8000;
        R(b, QUEUE_NUM) = QSIZE;
        R(b, DESC_LO) = (u32)m;
        R(b, DESC_HI) = 0;
        R(b, AVAIL_LO) = (u32)(m + 0x1000);
        R(b, AVAIL_HI) = 0;
        R(b, USED_LO) = (u32)(m + 0x2000);
        R(b, USED_HI) = 0;
        R(b, QUEUE_READY) = 1;
        queues++;
    }
    R(b, STATUS) = S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;
    return queues;
}

void main_c(u8 *boot_params) {
    u64 bases[MAX_DEVICES];
    int n = find_virtio(cmdline_of(boot_params), bases, MAX_DEVICES);
    int queues[MAX_DEVICES];
    int total = 0;
    for (int i = 0; i < n; i++) total += queues[i] = break_queues(bases[i], i);
    puts("virtio-flood: ");
    putdec((u64)n);
    puts(" devices, ");
    putdec((u64)total);
    puts(" queues broken\n");
    int told = 0;
    for (;;) {
        int needs_reset = 0;
        for (int i = 0; i < n; i++) {
            for (int q = 0; q < queues[i]; q++) R(bases[i], QUEUE_NOTIFY) = (u32)q;
            if (status_of(bases[i]) & 64) needs_reset++;
        }
        if (!told && n && needs_reset == n) {
            puts("virtio-flood: DEVICE_NEEDS_RESET on every device\n");
            told = 1;
        }
    }
}

__attribute__((naked, section(".text.start"))) void _start(void) {
    __asm__ volatile("mov %rsi, %rdi\n call main_c\n 1: hlt\n jmp 1b");
}
