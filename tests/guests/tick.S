#include "guest.h"
/* Prints "tick" lines forever: a guest that is always visibly running, for pause/resume. */
    .code64
    .text
    .globl _start
_start:
1:  lea line(%rip), %rsi
    call puts
    jmp 1b
#include "common.S"
line: .asciz "tick\n"
