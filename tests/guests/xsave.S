#include "guest.h"
/* XSAVE as the guest sees it: enable the x87/SSE/AVX components KVM offers in XCR0, then
   check that CPUID 0xd.0 EBX (the XSAVE area size for the current XCR0) grows to match what
   those components need: KVM must have seen the XSETBV. (No XGETBV: PVM hosts cannot
   emulate it in guest kernel mode.) */
    .code64
    .text
    .globl _start
_start:
    mov $1, %eax
    cpuid
    bt $26, %ecx                  /* XSAVE */
    jnc no_xsave
    mov %cr4, %rax
    bts $18, %rax                 /* CR4.OSXSAVE */
    mov %rax, %cr4
    mov $0xd, %eax
    xor %ecx, %ecx
    cpuid
    and $7, %eax                  /* x87, SSE, AVX: what every kernel enables first */
    mov %rax, %r12
    xor %edx, %edx
    xor %ecx, %ecx
    xsetbv
    /* The size the enabled components need, from their own sub-leaves: max(offset + size). */
    mov $576, %r13d
    bt $2, %r12
    jnc 1f
    mov $0xd, %eax
    mov $2, %ecx
    cpuid
    add %ebx, %eax
    mov %eax, %r13d
1:  mov $0xd, %eax
    xor %ecx, %ecx
    cpuid
    mov %rbx, %r14
    lea set(%rip), %rsi
    call puts
    mov %r12, %rax
    call puthex
    lea size(%rip), %rsi
    call puts
    mov %r14, %rax
    call puthex
    lea want(%rip), %rsi
    mov %r13, %rax
    call say_hex
    cmp %r13, %r14
    jne bad
    lea ok(%rip), %rsi
    call puts
    call reset
bad:
    lea inconsistent(%rip), %rsi
    call puts
    call reset
no_xsave:
    lea none(%rip), %rsi
    call puts
    call reset
#include "common.S"
set:  .asciz "xsave: xcr0 set "
size: .asciz ", cpuid 0xd.0 ebx "
want: .asciz ", components need "
ok:   .asciz "xsave consistent\n"
inconsistent: .asciz "xsave INCONSISTENT\n"
none: .asciz "xsave: not offered\n"
