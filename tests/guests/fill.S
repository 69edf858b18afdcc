#include "guest.h"
/* Fill: touch every 4 KiB page of every RAM range in the e820 map of boot_params, then
   reset. Each touch rewrites a qword with its own value (`orq $0`), so the guest's own code,
   stack and page tables survive it. The host-side test checks ember's memory stays within
   --mem-mib plus the documented overhead when the guest uses all of its RAM. */
    .code64
    .text
    .globl _start
_start:
    mov %rsi, %r12                  /* boot_params */
    movzbl 0x1e8(%r12), %r14d       /* e820_entries */
    lea 0x2d0(%r12), %rbx           /* e820_table, 20 bytes an entry */
    xor %r15, %r15                  /* pages touched */
1:  test %r14d, %r14d
    jz 3f
    cmpl $1, 16(%rbx)               /* RAM only */
    jne 2f
    mov (%rbx), %rdi
    mov %rdi, %rdx
    add 8(%rbx), %rdx               /* end of the range */
    add $0xfff, %rdi
    and $~0xfff, %rdi               /* first whole page */
4:  lea 4096(%rdi), %rax
    cmp %rdx, %rax
    ja 2f                           /* no whole page left */
    orq $0, (%rdi)
    mov %rax, %rdi
    inc %r15
    jmp 4b
2:  add $20, %rbx
    dec %r14d
    jmp 1b
3:  lea done(%rip), %rsi
    mov %r15, %rax
    call say_hex
    call reset
#include "common.S"
done: .asciz "fill: pages touched "
