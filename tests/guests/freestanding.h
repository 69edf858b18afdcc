/* What the freestanding C test guests share: integer types, port output, the console, a
   failure count, the reset, and the virtio-mmio registers and how to find the devices ember
   announces on the kernel command line (virtio_mmio.device=4K@ADDR:IRQ). Entered in 64-bit
   long mode with %rsi = boot_params; no libc, no interrupts. */
#ifndef FREESTANDING_H
#define FREESTANDING_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define COM1 0x3f8

static void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static u64 rdtsc(void) {
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}

void *memset(void *d, int c, unsigned long n) {
    u8 *p = d;
    while (n--) *p++ = (u8)c;
    return d;
}
void *memcpy(void *d, const void *s, unsigned long n) {
    u8 *p = d;
    const u8 *q = s;
    while (n--) *p++ = *q++;
    return d;
}

static void puts(const char *s) { while (*s) outb(COM1, (u8)*s++); }
static void puthex(u64 v) {
    puts("0x");
    for (int i = 60; i >= 0; i -= 4) outb(COM1, "0123456789abcdef"[(v >> i) & 0xf]);
}
static void putdec(u64 v) {
    char b[24];
    int i = 0;
    do { b[i++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (i) outb(COM1, (u8)b[--i]);
}
static int starts(const char *s, const char *p) {
    while (*p) if (*s++ != *p++) return 0;
    return 1;
}
/* A check that failed: said on the console and counted; a guest ends with its verdict. */
static int failures;
__attribute__((unused)) static void fail(const char *what) {
    puts("FAIL: ");
    puts(what);
    puts("\n");
    failures++;
}
static void reset(void) {
    outb(0x64, 0xfe);
    for (;;) __asm__ volatile("hlt");
}
/* virtio-mmio registers. */
#define R(base, off) (*(volatile u32 *)((base) + (off)))
enum {
    MAGIC = 0x00, VERSION = 0x04, DEVICE_ID = 0x08, DEV_FEATURES = 0x10, DEV_FEATURES_SEL = 0x14,
    DRV_FEATURES = 0x20, DRV_FEATURES_SEL = 0x24, QUEUE_SEL = 0x30, QUEUE_NUM_MAX = 0x34,
    QUEUE_NUM = 0x38, QUEUE_READY = 0x44, QUEUE_NOTIFY = 0x50, STATUS = 0x70, DESC_LO = 0x80,
    DESC_HI = 0x84, AVAIL_LO = 0x90, AVAIL_HI = 0x94, USED_LO = 0xa0, USED_HI = 0xa4, CONFIG = 0x100,
};
enum { S_ACK = 1, S_DRIVER = 2, S_DRIVER_OK = 4, S_FEATURES_OK = 8 };
/* The kernel command line ember wrote (boot_params.cmd_line_ptr). */
static const char *cmdline_of(const u8 *boot_params) {
    return (const char *)(u64) * (const u32 *)(boot_params + 0x228);
}

/* The register windows of up to `max` virtio-mmio devices named on `cmdline`, in order;
   returns how many. */
static int find_virtio(const char *cmdline, u64 *bases, int max) {
    int n = 0;
    for (const char *p = cmdline; *p; p++) {
        if (starts(p, "virtio_mmio.device=4K@0x") && n < max) {
            u64 v = 0;
            for (p += 24; *p && *p != ':'; p++)
                v = v * 16 + (u64)(*p <= '9' ? *p - '0' : (*p | 0x20) - 'a' + 10);
            bases[n++] = v;
        }
    }
    return n;
}

#endif
