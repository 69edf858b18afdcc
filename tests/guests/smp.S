#include "guest.h"
/* SMP: the BSP wakes the APs with INIT-SIPI-SIPI; each AP prints its APIC id (from CPUID)
   under a spinlock and counts itself in; the BSP waits for all of them, says ready (where
   --snapshot-on-ready snapshots the VM), and wakes and waits for them once more: each AP
   prints "cpu N up" twice, then the BSP "smp: all N cpus up". */
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

    /* Enable the LAPIC, then two rounds of INIT, SIPI, SIPI to all but self, each waited
       for. Between them the guest says ready (124 on the boot-timer port): there
       --snapshot-on-ready snapshots it, every AP halted after its first start, and the second
       round, in the restored VM, starts the restored APs again. */
    mov $LAPIC, %rbx
    movl $0x1ff, 0xf0(%rbx)
    mov %r12, %r13
    dec %r13                    /* r13: APs that have counted in so far, once waited for */
    xor %r15, %r15              /* r15: rounds done */
wake:
    movl $0x000c4500, 0x300(%rbx)
    call delay
    movl $0x000c4610, 0x300(%rbx)
    call delay
    movl $0x000c4610, 0x300(%rbx)

    /* Wait for the round's APs, for at most 10^10 TSC cycles (seconds). */
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
2:  inc %r15
    cmp $2, %r15
    je 3f
    mov $BOOT_TIMER_PORT, %dx
    mov $124, %al
    out %al, %dx
    mov %r12, %rax
    dec %rax
    add %rax, %r13
    jmp wake
3:  lea all(%rip), %rsi
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
