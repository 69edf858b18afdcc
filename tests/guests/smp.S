#include "guest.h"
/* SMP: the BSP wakes the APs with INIT-SIPI-SIPI; each AP prints its APIC id (from CPUID)
   under a spinlock and counts itself in; the BSP waits for all of them. */
#define TRAMPOLINE 0x10000          /* SIPI vector 0x10 */
#define DATA_SEG   0x1000           /* real-mode segment of the shared data at 0x11000 */
#define LOCK       0x11000
#define COUNT      0x11004
#define LAPIC      0xfee00000
    .code64
    .text
    .globl _start
_start:
    /* N = CPUID.1:EBX[23:16], the vCPU count ember advertises. */
    mov $1, %eax
    cpuid
    shr $16, %ebx
    and $0xff, %ebx
    mov %rbx, %r12
    mov %rbx, %rax
    lea hello(%rip), %rsi
    call say_dec

    /* Copy the trampoline below 1 MiB and clear the shared data. */
    lea ap_start(%rip), %rsi
    mov $TRAMPOLINE, %rdi
    lea ap_end(%rip), %rcx
    sub %rsi, %rcx
    rep movsb
    movl $0, LOCK
    movl $0, COUNT

    /* Enable the LAPIC, then INIT, SIPI, SIPI to all but self. */
    mov $LAPIC, %rbx
    movl $0x1ff, 0xf0(%rbx)
    movl $0x000c4500, 0x300(%rbx)
    call delay
    movl $0x000c4610, 0x300(%rbx)
    call delay
    movl $0x000c4610, 0x300(%rbx)

    /* Wait for N-1 APs, for at most 10^10 TSC cycles (seconds). */
    mov %r12, %r13
    dec %r13
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    mov $10000000000, %r14
    add %rdx, %r14
1:  mov COUNT, %eax
    cmp %r13d, %eax
    je 2f
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    cmp %r14, %rdx
    jb 1b
    lea timeout(%rip), %rsi
    call puts
    call reset
2:  /* Take the lock so the line is not interleaved with a late AP print. */
    lea all(%rip), %rsi
    call puts
    mov %r12, %rax
    call putdec
    lea up(%rip), %rsi
    call puts
    call reset

/* A short spin between INIT and SIPI (KVM needs no real delay). Kept tiny and without
   PAUSE: a PVM host emulates guest kernel code at about a microsecond an instruction. */
delay:
    mov $1000, %rcx
1:  dec %rcx
    jnz 1b
    ret

#include "common.S"
hello:   .asciz "smp: cpus advertised "
all:     .asciz "smp: all "
up:      .asciz " cpus up\n"
timeout: .asciz "smp: TIMEOUT waiting for APs\n"

    /* Real-mode AP code, copied to TRAMPOLINE; position-independent. */
    .code16
ap_start:
    cli
    mov $DATA_SEG, %ax
    mov %ax, %ds
    mov $1, %eax
    cpuid
    shr $24, %ebx               /* initial APIC id */
3:  mov $1, %al
    xchg %al, (LOCK - TRAMPOLINE)
    test %al, %al
    jnz 3b
    mov $0x3f8, %dx
    mov $'c', %al
    out %al, %dx
    mov $'p', %al
    out %al, %dx
    mov $'u', %al
    out %al, %dx
    mov $' ', %al
    out %al, %dx
    mov %bx, %ax                /* APIC id < 256: up to three digits */
    mov $100, %cl
    div %cl                     /* al = hundreds, ah = rest */
    mov %ah, %ch
    test %al, %al
    jz 4f
    add $'0', %al
    out %al, %dx
    mov $1, %bh                 /* printed a leading digit */
4:  movzx %ch, %ax
    mov $10, %cl
    div %cl
    test %bh, %bh
    jnz 5f
    test %al, %al
    jz 6f
5:  add $'0', %al
    out %al, %dx
6:  mov %ah, %al
    add $'0', %al
    out %al, %dx
    mov $' ', %al
    out %al, %dx
    mov $'u', %al
    out %al, %dx
    mov $'p', %al
    out %al, %dx
    mov $'\n', %al
    out %al, %dx
    movb $0, (LOCK - TRAMPOLINE)
    lock incl (COUNT - TRAMPOLINE)
7:  hlt
    jmp 7b
ap_end:
