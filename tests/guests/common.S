/* Shared 64-bit helpers for the tiny guests: console output, numbers, reset. */

/* Prints a NUL-terminated string at %rsi. Clobbers rax, rdx, rsi. */
puts:
    mov $COM1, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  ret

/* Prints %rax as 0x-prefixed hex. Clobbers rax, rcx, rdx, rdi. */
puthex:
    mov %rax, %rdi
    mov $COM1, %dx
    mov $'0', %al
    out %al, %dx
    mov $'x', %al
    out %al, %dx
    mov $60, %cl
1:  mov %rdi, %rax
    shr %cl, %rax
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe 2f
    add $('a' - '9' - 1), %al
2:  out %al, %dx
    sub $4, %cl
    jns 1b
    ret

/* Prints %rax (< 1000) in decimal. Clobbers rax, rbx, rcx, rdx. */
putdec:
    xor %ecx, %ecx
    mov $10, %ebx
1:  xor %edx, %edx
    div %ebx
    push %rdx
    inc %ecx
    test %eax, %eax
    jnz 1b
    mov $COM1, %dx
2:  pop %rax
    add $'0', %al
    out %al, %dx
    dec %ecx
    jnz 2b
    ret

/* Prints the string at %rsi, %rax in hex, and a newline. Clobbers rax, rcx, rdx, rsi, rdi. */
say_hex:
    push %rax
    call puts
    pop %rax
    call puthex
    lea newline(%rip), %rsi
    jmp puts

/* Prints the string at %rsi, %rax (< 1000) in decimal, and a newline. Clobbers rax, rbx, rcx,
   rdx, rsi. */
say_dec:
    push %rax
    call puts
    pop %rax
    call putdec
    lea newline(%rip), %rsi
    jmp puts

/* Tells ember "userspace reached" through the boot-timer port. */
boot_done:
    mov $BOOT_TIMER_PORT, %dx
    mov $123, %al
    out %al, %dx
    ret

/* Pulses the i8042 reset line: ember stops the VM and exits 0. */
reset:
    mov $0xfe, %al
    out %al, $0x64
1:  hlt
    jmp 1b

/* The end of every line say_hex and say_dec print. */
newline: .asciz "\n"
