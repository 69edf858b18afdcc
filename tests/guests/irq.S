#include "guest.h"
/* Interrupts through ember's IOAPIC: routes COM1's pin 4 to vector 0x31 and takes the UART's
   transmit-empty interrupt (raised as soon as it is enabled) once with the pin edge-triggered,
   then once level-triggered (whose EOI KVM hands to ember), then resets. The handler turns
   the UART's interrupts off again, so each enable makes exactly one. */
#define LAPIC      0xfee00000
#define IOAPIC     0xfec00000
#define VECTOR     0x31
#define COM1_PIN   4
    .code64
    .text
    .globl _start
_start:
    /* A 64-bit interrupt gate for VECTOR, on the code segment ember booted us with. */
    lea idt(%rip), %rdi
    lea (VECTOR * 16)(%rdi), %rdi
    lea handler(%rip), %rax
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

    /* Enable the local APIC; accept every priority. */
    mov $LAPIC, %rbx
    movl $0x1ff, 0xf0(%rbx)
    movl $0, 0x80(%rbx)

    /* The IOAPIC's version register, then pin 4 -> VECTOR, fixed, to APIC 0, edge, unmasked:
       high half first, as Linux writes it. */
    mov $IOAPIC, %rbx
    movl $1, (%rbx)
    mov 0x10(%rbx), %eax
    lea version(%rip), %rsi
    call say_hex
    movl $(0x10 + 2 * COM1_PIN + 1), (%rbx)
    movl $0, 0x10(%rbx)
    movl $(0x10 + 2 * COM1_PIN), (%rbx)
    movl $VECTOR, 0x10(%rbx)

    /* OUT2, the PC's gate for the UART's interrupt line, on. */
    mov $(COM1 + 4), %dx
    mov $0x08, %al
    out %al, %dx

    movl $0, count(%rip)
    call uart_interrupt
    mov $1, %ecx
    call wait_for_count
    lea edge(%rip), %rsi
    call puts

    /* Level-triggered now: the EOI after the next interrupt leaves the guest for ember. */
    movl $(0x10 + 2 * COM1_PIN), (%rbx)
    movl $(VECTOR | 0x8000), 0x10(%rbx)
    call uart_interrupt
    mov $2, %ecx
    call wait_for_count
    lea level(%rip), %rsi
    call puts
    call reset

/* Waits, halted, until the handler has counted %ecx interrupts. Interrupts stay off until
   `sti; hlt`, whose one-instruction shadow makes the HLT come first: an interrupt taken before
   it would leave the HLT waiting for ever. */
wait_for_count:
1:  sti
    hlt
    cli
    cmp %ecx, count(%rip)
    jb 1b
    ret

/* Enables the UART's transmit-empty interrupt, which it raises at once. */
uart_interrupt:
    mov $(COM1 + 1), %dx
    mov $0x02, %al
    out %al, %dx
    ret

handler:
    push %rax
    push %rdx
    push %rsi
    /* Acknowledge the UART (IIR) and turn its interrupts off. */
    mov $(COM1 + 2), %dx
    in %dx, %al
    mov $(COM1 + 1), %dx
    xor %al, %al
    out %al, %dx
    incl count(%rip)
    mov $LAPIC, %rax
    movl $0, 0xb0(%rax)        /* EOI */
    pop %rsi
    pop %rdx
    pop %rax
    iretq

#include "common.S"
version: .asciz "ioapic version "
edge:    .asciz "edge-triggered interrupt on vector 0x31\n"
level:   .asciz "level-triggered interrupt on vector 0x31\n"
    .balign 8
count:   .long 0
    .balign 16
idtr:    .word 256 * 16 - 1
idtr_base: .quad 0
    .balign 16
idt:     .fill 256 * 16, 1, 0
