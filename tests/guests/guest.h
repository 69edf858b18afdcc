/* Ports the tiny guests use. */
#define COM1 0x3f8
#define BOOT_TIMER_PORT 0x3f0
