#include "guest.h"
/* Entered in 32-bit protected mode, paging off, through the PVH note (%ebx = start_info). The
   `ember bench` guest: it says ready first (the byte 124 on port 0x3f0: where `ember bench
   --restore` snapshots it; any VMM ignores the write otherwise), prints its lines, signals
   Firecracker's boot timer and resets. */
    .code32
    .text
    .globl _start
_start:
pvh_entry:
    mov $0x80000, %esp
    mov $124, %al
    mov $0x3f0, %dx
    out %al, %dx
    mov %ebx, %edi
    mov $msg, %esi
    call puts32
    cmpl $0x336ec578, (%edi)
    jne 1f
    mov $ok, %esi
    call puts32
    /* Firecracker's MMIO boot timer: the byte 123 at 0xc0000000. */
    movb $123, 0xc0000000
    mov $0xfe, %al
    out %al, $0x64
1:  mov $bad, %esi
    call puts32
    mov $0xfe, %al
    out %al, $0x64
2:  hlt
    jmp 2b

puts32:
    mov $COM1, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  ret

msg: .asciz "ember tiny guest: hello from 32-bit PVH entry\n"
ok:  .asciz "start_info ok\n"
bad: .asciz "start_info BAD\n"

    /* XEN_ELFNOTE_PHYS32_ENTRY (18): where a PVH loader enters. */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .balign 4
    .long pvh_entry
    .balign 4
