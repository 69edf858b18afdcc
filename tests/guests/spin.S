#include "guest.h"
/* Never yields: a tight loop with interrupts off, no exits of its own. ember must still stop
   it on a signal (the vCPU thread is kicked out of KVM_RUN). */
    .code64
    .text
    .globl _start
_start:
    lea msg(%rip), %rsi
    call puts
    cli
1:  jmp 1b
#include "common.S"
msg: .asciz "spinning\n"
