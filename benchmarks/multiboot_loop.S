/* A multiboot (v1) kernel for QEMU's -kernel that runs a vlbr guest image under the Guest
   ABI's machine set-up: it copies the ABI's low memory (page tables, GDT: lowmem.bin) and the
   guest's code (image.bin) into place, enters long mode and jumps to the guest's ENTRY.
   Every constant comes from vlbr as a -D (benchmarks/bench_qemu_peer.py), named there once. */
#define MULTIBOOT_MAGIC 0x1BADB002  /* Multiboot Specification 0.6.96, 3.1.2 */

    .section .text
    .align 4
    .long MULTIBOOT_MAGIC, 0, -MULTIBOOT_MAGIC  /* flags 0: an ELF kernel, nothing asked */

    .code32
    .globl _start
_start:
    cli
    mov $lowmem, %esi
    mov $LOWMEM_ADDR, %edi
    mov $(lowmem_end - lowmem), %ecx
    rep movsb
    mov $image, %esi
    mov $IMAGE_ADDR, %edi
    mov $(image_end - image), %ecx
    rep movsb
    mov $PML4_ADDR, %eax
    mov %eax, %cr3
    mov $CR4_PAE, %eax
    mov %eax, %cr4
    mov $MSR_EFER, %ecx
    rdmsr
    or $EFER_LME, %eax
    wrmsr
    mov %cr0, %eax
    or $(CR0_PE | CR0_PG), %eax
    mov %eax, %cr0
    lgdt gdtr
    ljmp $SEL_CODE, $long_mode

    .code64
long_mode:
    mov $SEL_DATA, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $STACK_TOP, %rsp
    mov $ENTRY, %rax
    jmp *%rax

    .section .data
gdtr:
    .word GDT_LIMIT
    .long GDT_BASE
lowmem:
    .incbin "lowmem.bin"
lowmem_end:
image:
    .incbin "image.bin"
image_end:
