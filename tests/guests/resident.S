#include "guest.h"
/* A guest for memory shared between VMs restored from one snapshot (bench/snapshot-sharing.sh,
   tests/snapshot.rs): it writes every 4 KiB page of the 32 MiB from 16 MiB up (its first word:
   the page's address), prints "ready" and says so to ember (124 on the boot-timer port), then
   reads every page back, checking that word, writes one word in each MiB (a few pages of its
   own, as a guest that runs on would have), prints "resident: checked" and halts for good: it
   stays resident until ember is stopped. "FAIL: memory differs" and a reset if a page does not
   hold what was written. One word a page: a PVM host emulates this code at about a
   microsecond an instruction. */
#define START 0x1000000
#define SIZE  0x2000000
    .code64
    .text
    .globl _start
_start:
    mov $START, %rdi
    mov $(SIZE / 4096), %rcx
1:  mov %rdi, (%rdi)
    add $4096, %rdi
    dec %rcx
    jnz 1b

    lea ready(%rip), %rsi
    call puts
    mov $BOOT_TIMER_PORT, %dx
    mov $124, %al
    out %al, %dx

    mov $START, %rdi
    mov $(SIZE / 4096), %rcx
2:  cmp %rdi, (%rdi)
    jne bad
    add $4096, %rdi
    dec %rcx
    jnz 2b

    mov $START, %rdi
3:  movq $0, (%rdi)
    add $0x100000, %rdi
    cmp $(START + SIZE), %rdi
    jb 3b

    lea checked(%rip), %rsi
    call puts
    cli
4:  hlt
    jmp 4b

bad:
    lea differs(%rip), %rsi
    call puts
    call reset

#include "common.S"
ready:   .asciz "ready\n"
checked: .asciz "resident: checked\n"
differs: .asciz "FAIL: memory differs\n"
