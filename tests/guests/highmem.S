#include "guest.h"
/* High memory: find the top of RAM in the e820 map of boot_params, then write and read back
   a pattern in the last page below it. */
    .code64
    .text
    .globl _start
_start:
    mov %rsi, %r12                  /* boot_params */
    movzbl 0x1e8(%r12), %ecx        /* e820_entries */
    lea 0x2d0(%r12), %rbx           /* e820_table, 20 bytes an entry */
    xor %r13, %r13                  /* highest RAM end */
1:  test %ecx, %ecx
    jz 3f
    cmpl $1, 16(%rbx)
    jne 2f
    mov (%rbx), %rax
    add 8(%rbx), %rax
    cmp %r13, %rax
    jbe 2f
    mov %rax, %r13
2:  add $20, %rbx
    dec %ecx
    jmp 1b
3:  lea top(%rip), %rsi
    mov %r13, %rax
    call say_hex
    /* Pattern: each qword of the last page holds its own address, inverted. */
    lea -4096(%r13), %rdi
    mov $512, %ecx
4:  mov %rdi, %rax
    not %rax
    mov %rax, (%rdi)
    add $8, %rdi
    dec %ecx
    jnz 4b
    lea -4096(%r13), %rdi
    mov $512, %ecx
5:  mov %rdi, %rax
    not %rax
    cmp %rax, (%rdi)
    jne 6f
    add $8, %rdi
    dec %ecx
    jnz 5b
    lea ok(%rip), %rsi
    call puts
    call reset
6:  lea bad(%rip), %rsi
    call puts
    call reset
#include "common.S"
top: .asciz "highmem: top of RAM at "
ok:  .asciz "highmem: pattern ok\n"
bad: .asciz "highmem: pattern BAD\n"
