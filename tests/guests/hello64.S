#include "guest.h"
/* Entered in 64-bit long mode through the Linux boot protocol (%rsi = boot_params). */
    .code64
    .text
    .globl _start
_start:
    mov %rsi, %r12
    lea msg(%rip), %rsi
    call puts
    /* boot_params.hdr.header must read "HdrS". */
    cmpl $0x53726448, 0x202(%r12)
    jne 1f
    lea ok(%rip), %rsi
    call puts
    call boot_done
    call reset
1:  lea bad(%rip), %rsi
    call puts
    call reset
#include "common.S"
msg: .asciz "ember tiny guest: hello from 64-bit long mode\n"
ok:  .asciz "boot_params ok\n"
bad: .asciz "boot_params BAD\n"
