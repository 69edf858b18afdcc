/* Counts for ever: "count 1", "count 2", ... one line about every 10 ms on a PVM host, so a
   test can pause it, snapshot it from outside (the control socket) and see a restored VM go on
   from the next number. */

#include "freestanding.h"

void main_c(void) {
    for (u64 n = 1;; n++) {
        puts("count ");
        putdec(n);
        puts("\n");
        for (volatile u32 i = 0; i < 2000; i++) {
        }
    }
}

__attribute__((naked, section(".text.start"))) void _start(void) {
    __asm__ volatile("call main_c\n 1: hlt\n jmp 1b");
}
