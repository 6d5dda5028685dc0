/* Guest runtime entry, exception stubs and the ring-3 round trip (Guest ABI in docs/design.md). */
    .intel_syntax noprefix

    .section .text.entry, "ax"
    .globl _start
_start:
    /* Keep the top 4 KiB of the stack free: TSS.RSP0 points at the stack top, so an interrupt
       from ring 3 pushes its frame there. RDI = vCPU index, RSI = vCPU count (ABI). */
    sub rsp, 0x1000
    and rsp, -16
    call rt_start
1:  hlt
    jmp 1b

    .text
/* rax = this vCPU's index, from its GDT base (0x4000 + n * 0x200 per the ABI). */
    .globl rt_cpu_index
rt_cpu_index:
    sub rsp, 16
    sgdt [rsp]
    mov rax, [rsp + 2]
    add rsp, 16
    sub rax, 0x4000
    shr rax, 9
    ret

/* Exception stubs: push a dummy error code where the CPU pushes none, then the vector. */
.macro ISR_NOERR vec
    .globl isr_\vec
isr_\vec:
    push 0
    push \vec
    jmp isr_common
.endm
.macro ISR_ERR vec
    .globl isr_\vec
isr_\vec:
    push \vec
    jmp isr_common
.endm

ISR_NOERR 0
ISR_NOERR 1
ISR_NOERR 2
ISR_NOERR 3
ISR_NOERR 4
ISR_NOERR 5
ISR_NOERR 6
ISR_NOERR 7
ISR_ERR 8
ISR_NOERR 9
ISR_ERR 10
ISR_ERR 11
ISR_ERR 12
ISR_ERR 13
ISR_ERR 14
ISR_NOERR 15
ISR_NOERR 16
ISR_ERR 17
ISR_NOERR 18
ISR_NOERR 19
ISR_NOERR 20
ISR_ERR 21
ISR_NOERR 22
ISR_NOERR 23
ISR_NOERR 24
ISR_NOERR 25
ISR_NOERR 26
ISR_NOERR 27
ISR_NOERR 28
ISR_ERR 29
ISR_ERR 30
ISR_NOERR 31

/* An exception from CPL3 ends the ring-3 excursion (see rt_user_resume); the choice is made
   with CMOV and an indirect jump, so no conditional branch lands in the LBR records. */
isr_common:
    push rax
    push rbx
    lea rax, [rip + isr_kernel]
    lea rbx, [rip + isr_from_user]
    test byte ptr [rsp + 40], 3     /* CS: rbx, rax, vector, error, rip, cs */
    cmovnz rax, rbx
    pop rbx
    jmp rax
isr_from_user:
    pop rax
    mov rdx, [rsp]                  /* the vector */
    mov rcx, [rsp + 8]              /* the error code (0 for vectors without one) */
    call rt_cpu_index
    mov [rt_user_exit_vector + rax * 8], rdx
    mov [rt_user_exit_error + rax * 8], rcx
    jmp rt_user_resume
isr_kernel:
    pop rax
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    cld
    call rt_exception
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    .globl isr_iretq
isr_iretq:
    iretq

/* u64 rt_enter_user(void (*fn)(void), u64 user_stack_top): run fn at CPL3 until it executes
   `int 0x80` (RT_USER_RETURN_VECTOR) or faults, then return here at CPL0 with that vector. No conditional branches, so the
   CPL filtering checks see only the branches of their own loops. */
    .globl rt_enter_user
rt_enter_user:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov r12, rdi
    call rt_cpu_index
    mov [rt_kernel_rsp + rax * 8], rsp
    push 0x1B           /* SS: user data */
    push rsi            /* RSP */
    push 0x2            /* RFLAGS: IF=0 */
    push 0x23           /* CS: user code64 */
    push r12            /* RIP */
    .globl rt_enter_user_iretq
rt_enter_user_iretq:
    iretq

/* Vector 0x80 (DPL3 gate): the way back from ring 3, on the TSS.RSP0 stack. rt_enter_user
   returns 0x80. */
    .globl isr_user_return
isr_user_return:
    call rt_cpu_index
    mov qword ptr [rt_user_exit_vector + rax * 8], 0x80
    jmp rt_user_resume

/* Any other exception at CPL3 also ends the ring-3 excursion (isr_common comes here), and
   rt_enter_user returns that vector. */
    .globl rt_user_resume
rt_user_resume:
    call rt_cpu_index
    mov rdx, [rt_user_exit_vector + rax * 8]
    mov rsp, [rt_kernel_rsp + rax * 8]
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov rax, rdx
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    .globl rt_user_return_ret
rt_user_return_ret:
    ret

/* Vector 0x81: returns at once (a pair of OTHER branches with nothing in between). */
    .globl isr_bounce
isr_bounce:
    iretq
