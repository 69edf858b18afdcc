#include "guest.h"
/* A triple fault: an empty IDT and an exception. */
    .code64
    .text
    .globl _start
_start:
    lea msg(%rip), %rsi
    call puts
    lidt idt(%rip)
    ud2
    hlt
#include "common.S"
msg: .asciz "triple fault next\n"
idt: .word 0
     .quad 0
