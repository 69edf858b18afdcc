#include "guest.h"
/* Unknown ports and MMIO: every port written and read at every width (except the console,
   the i8042 and the boot timer), unbacked MMIO read and written; ember must carry on, and
   unclaimed reads must see all ones. */
    .code64
    .text
    .globl _start
_start:
    lea start(%rip), %rsi
    call puts
    xor %ecx, %ecx
1:  cmp $0x60, %ecx
    jb 2f
    cmp $0x64, %ecx
    jbe 3f
2:  cmp $0x3f0, %ecx
    jb 4f
    cmp $0x3ff, %ecx
    jbe 3f
4:  mov %ecx, %edx
    mov $0xa5, %al
    out %al, %dx
    in %dx, %al
    mov $0xa5a5, %ax
    out %ax, %dx
    in %dx, %ax
    mov $0xa5a5a5a5, %eax
    out %eax, %dx
    in %dx, %eax
3:  inc %ecx
    cmp $0x10000, %ecx
    jb 1b
    lea swept(%rip), %rsi
    call puts
    /* An unclaimed port reads all ones. */
    mov $0x200, %dx
    in %dx, %eax
    cmp $0xffffffff, %eax
    jne bad
    /* Unbacked MMIO in the gap and below the IOAPIC. */
    mov $0xd0000000, %rbx
    movl $0xdeadbeef, (%rbx)
    mov (%rbx), %eax
    cmp $0xffffffff, %eax
    jne bad
    mov $0xfed00000, %rbx
    movq (%rbx), %rax
    movb $1, 8(%rbx)
    lea ok(%rip), %rsi
    call puts
    call reset
bad:
    lea fail(%rip), %rsi
    call puts
    call reset
#include "common.S"
start: .asciz "sweeping ports\n"
swept: .asciz "ports swept\n"
ok:    .asciz "unknown ports and MMIO ok\n"
fail:  .asciz "unknown port or MMIO read BAD\n"
