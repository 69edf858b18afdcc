#include "guest.h"
/* Serial input: echoes what arrives on COM1 until 'q', then resets. */
    .code64
    .text
    .globl _start
_start:
    lea ready(%rip), %rsi
    call puts
1:  mov $(COM1 + 5), %dx      /* line status register */
    in %dx, %al
    test $1, %al              /* data ready */
    jz 1b
    mov $COM1, %dx
    in %dx, %al
    cmp $'q', %al
    je 2f
    out %al, %dx
    jmp 1b
2:  lea bye(%rip), %rsi
    call puts
    call reset
#include "common.S"
ready: .asciz "echo ready\n"
bye:   .asciz "\necho done\n"
