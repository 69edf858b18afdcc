#include "guest.h"
/* A guest whose whole state a snapshot must carry: a general register (r12, a constant), a
   counter kept both in r13 and in memory, an SSE register (xmm3), the local APIC's periodic
   timer with its interrupt handler (IDT), and the UART's scratch register. It counts while
   three timer ticks go by, prints "ready", says ready to ember (124 on the boot-timer port:
   with --snapshot-on-ready the snapshot is of the moment right after that write), prints
   "resumed", waits for three more ticks (the restored timer must still fire), checks every
   piece against what it was, prints "snapshot state intact" or what differed, and resets. */
#define LAPIC   0xfee00000
#define VECTOR  0x40
#define MAGIC   0x5eed0f0e11ba5e12
    .code64
    .text
    .globl _start
_start:
    /* SSE on: no x87 emulation, FXSAVE/FXRSTOR and SSE exceptions allowed. */
    mov %cr0, %rax
    and $~(1 << 2), %rax          /* EM */
    or $(1 << 1), %rax            /* MP */
    mov %rax, %cr0
    mov %cr4, %rax
    or $(3 << 9), %rax            /* OSFXSR, OSXMMEXCPT */
    mov %rax, %cr4
    movdqu pattern(%rip), %xmm3

    /* A 64-bit interrupt gate for the timer's vector, on the code segment ember booted us
       with. */
    lea idt(%rip), %rdi
    lea (VECTOR * 16)(%rdi), %rdi
    lea tick(%rip), %rax
    mov %ax, (%rdi)
    mov %cs, %cx
    mov %cx, 2(%rdi)
    movw $0x8e00, 4(%rdi)
    shr $16, %rax
    mov %ax, 6(%rdi)
    shr $16, %rax
    mov %eax, 8(%rdi)
    lea idt(%rip), %rax
    mov %rax, idtr_base(%rip)
    lidt idtr(%rip)

    /* The local APIC on, every priority accepted; its timer periodic on VECTOR, divide by 1,
       10,000,000 bus cycles (10 ms on KVM's 1 GHz APIC bus). */
    mov $LAPIC, %rbx
    movl $0x1ff, 0xf0(%rbx)
    movl $0, 0x80(%rbx)
    movl $0xb, 0x3e0(%rbx)
    movl $(0x20000 | VECTOR), 0x320(%rbx)
    movl $10000000, 0x380(%rbx)

    /* The UART's scratch register: only the UART's saved state brings it back. */
    mov $(COM1 + 7), %dx
    mov $0x5a, %al
    out %al, %dx

    movabs $MAGIC, %r12
    xor %r13, %r13
    sti
1:  inc %r13
    mov %r13, counter(%rip)
    cmpl $3, ticks(%rip)
    jb 1b

    lea ready(%rip), %rsi
    call puts
    mov $BOOT_TIMER_PORT, %dx
    mov $124, %al
    out %al, %dx
    lea resumed(%rip), %rsi
    call puts

    /* Three more ticks, halted between them. */
    mov ticks(%rip), %r14d
    add $3, %r14d
2:  sti
    hlt
    cmp %r14d, ticks(%rip)
    jb 2b
    cli

    lea bad_counter(%rip), %rsi
    cmp counter(%rip), %r13
    jne fail
    lea bad_r12(%rip), %rsi
    movabs $MAGIC, %rax
    cmp %rax, %r12
    jne fail
    lea bad_xmm(%rip), %rsi
    /* Through memory: a PVM host's emulator has SSE moves, not SSE compares. */
    movdqu %xmm3, seen(%rip)
    mov seen(%rip), %rax
    cmp pattern(%rip), %rax
    jne fail
    mov (seen + 8)(%rip), %rax
    cmp (pattern + 8)(%rip), %rax
    jne fail
    lea bad_scratch(%rip), %rsi
    mov $(COM1 + 7), %dx
    in %dx, %al
    cmp $0x5a, %al
    jne fail
    lea intact(%rip), %rsi
fail:
    call puts
    call reset

tick:
    push %rax
    incl ticks(%rip)
    mov $LAPIC, %rax
    movl $0, 0xb0(%rax)        /* EOI */
    pop %rax
    iretq

#include "common.S"
ready:       .asciz "ready\n"
resumed:     .asciz "resumed\n"
intact:      .asciz "snapshot state intact\n"
bad_counter: .asciz "FAIL: the counter in memory differs from r13\n"
bad_r12:     .asciz "FAIL: r12 changed\n"
bad_xmm:     .asciz "FAIL: xmm3 changed\n"
bad_scratch: .asciz "FAIL: the UART's scratch register changed\n"
    .balign 16
pattern:     .byte 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef
             .byte 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10
seen:        .quad 0, 0
    .balign 8
counter:     .quad 0
ticks:       .long 0
    .balign 16
idtr:        .word 256 * 16 - 1
idtr_base:   .quad 0
    .balign 16
idt:         .fill 256 * 16, 1, 0
