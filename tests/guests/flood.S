#include "guest.h"
/* Floods the console: 4096 lines of 63 bytes (252 KiB), then "flood done" and a reset. */
    .code64
    .text
    .globl _start
_start:
    mov $4096, %r12d
1:  lea line(%rip), %rsi
    call puts
    dec %r12d
    jnz 1b
    lea done(%rip), %rsi
    call puts
    call reset
#include "common.S"
line: .asciz "ember flood: 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLM\n"
done: .asciz "flood done\n"
