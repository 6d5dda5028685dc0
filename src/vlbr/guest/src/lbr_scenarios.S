/* Branch scenarios with exactly known LBR records: every branch the checks expect is at a
   global label, so the guest (and the host, from the ELF symbols) knows each FROM/TO address.
   Each scenario takes the IA32_LBR_CTL value in RDI and clears LBR_CTL before returning. */
    .intel_syntax noprefix
    .text

.macro LBR_ON
    mov rax, rdi
    mov rdx, rdi
    shr rdx, 32
    mov ecx, 0x14CE
    wrmsr
.endm
.macro LBR_OFF
    xor eax, eax
    xor edx, edx
    mov ecx, 0x14CE
    wrmsr
.endm

/* known_loop: 3 iterations of {call leaf; ret; jnz}: 8 taken branches (the last jnz falls
   through): newest first ret, call, jcc, ret, call, jcc, ret, call. */
    .globl known_loop, kl_top, kl_call, kl_leaf, kl_ret, kl_after_call, kl_jcc
known_loop:
    push rbx
    LBR_ON
    mov ebx, 3
kl_top:
kl_call:
    call kl_leaf
kl_after_call:
    dec ebx
kl_jcc:
    jnz kl_top
    LBR_OFF
    pop rbx
    ret
kl_leaf:
kl_ret:
    ret

/* branch_zoo: one taken branch of each kind, in this order: Jcc, near relative JMP, near
   indirect JMP, near relative CALL, RET, near indirect CALL, RET, far RET (OTHER). */
    .globl branch_zoo, zoo_jcc, zoo_t1, zoo_jmp_rel, zoo_t2, zoo_jmp_ind, zoo_t3
    .globl zoo_call_rel, zoo_fn_a, zoo_ret_a, zoo_after_a, zoo_call_ind, zoo_fn_b, zoo_ret_b
    .globl zoo_after_b, zoo_lret, zoo_t4
branch_zoo:
    LBR_ON
    xor eax, eax
zoo_jcc:
    jz zoo_t1
    ud2
zoo_t1:
zoo_jmp_rel:
    jmp zoo_t2
    ud2
zoo_t2:
    lea rax, [rip + zoo_t3]
zoo_jmp_ind:
    jmp rax
    ud2
zoo_t3:
zoo_call_rel:
    call zoo_fn_a
zoo_after_a:
    lea rax, [rip + zoo_fn_b]
zoo_call_ind:
    call rax
zoo_after_b:
    push 0x08
    lea rax, [rip + zoo_t4]
    push rax
zoo_lret:
    rex.w retf
zoo_t4:
    LBR_OFF
    ret
zoo_fn_a:
zoo_ret_a:
    ret
zoo_fn_b:
zoo_ret_b:
    ret

/* call_stack_scenario: call a; in a: call b, b returns, call c; LBR_CTL is cleared inside c.
   Branches in order: call a, call b, ret b, call c. */
    .globl call_stack_scenario, cs_call_a, cs_a, cs_call_b, cs_b, cs_ret_b, cs_after_b
    .globl cs_call_c, cs_c
call_stack_scenario:
    LBR_ON
cs_call_a:
    call cs_a
    ret
cs_a:
cs_call_b:
    call cs_b
cs_after_b:
cs_call_c:
    call cs_c
    ret
cs_b:
cs_ret_b:
    ret
cs_c:
    LBR_OFF
    ret

/* ler_scenario: a near jump straight onto UD2. The guest arms fault recovery at ler_recover. */
    .globl ler_scenario, ler_jmp, ler_target, ler_ud2, ler_recover
ler_scenario:
    LBR_ON
ler_jmp:
    jmp ler_target
    nop
ler_target:
ler_ud2:
    ud2
ler_recover:
    LBR_OFF
    ret

/* db_scenario: ICEBP (INT1) raises #DB with LBR on; recovery at db_recover; LBR_CTL left as
   the #DB left it, for the guest to read. */
    .globl db_scenario, db_icebp, db_recover
db_scenario:
    LBR_ON
db_icebp:
    .byte 0xF1
db_recover:
    ret

/* u64 cpl_scenario(ctl, user_stack_top): 2 taken Jcc at CPL0, then 2 taken Jcc at CPL3 in
   cpl_user, back by INT 0x80; returns the vector that ended ring 3 (0x80 normally). */
    .globl cpl_scenario, cplk_top, cplk_jcc, cpl_user, cplu_top, cplu_jcc, cplu_int
cpl_scenario:
    push rbx
    mov rbx, rsi
    LBR_ON
    mov ecx, 3
cplk_top:
    dec ecx
cplk_jcc:
    jnz cplk_top
    lea rdi, [rip + cpl_user]
    mov rsi, rbx
    call rt_enter_user
    mov r8, rax
    LBR_OFF
    mov rax, r8
    pop rbx
    ret
cpl_user:
    mov ecx, 3
cplu_top:
    dec ecx
cplu_jcc:
    jnz cplu_top
cplu_int:
    int 0x80

/* smp_run0/1(ctl): 2 taken Jcc, yield, 2 taken Jcc, yield, LBR off; different code per vCPU. */
    .globl smp_run0, smp0_top, smp0_jcc, smp_run1, smp1_top, smp1_jcc
smp_run0:
    LBR_ON
    mov ecx, 3
smp0_top:
    dec ecx
smp0_jcc:
    jnz smp0_top
    mov dx, 0xF5
    out dx, al
    mov ecx, 3
smp0_top2:
    dec ecx
smp0_jcc2:
    jnz smp0_top2
    mov dx, 0xF5
    out dx, al
    LBR_OFF
    ret
smp_run1:
    LBR_ON
    mov ecx, 3
smp1_top:
    dec ecx
smp1_jcc:
    jnz smp1_top
    mov dx, 0xF5
    out dx, al
    mov ecx, 3
smp1_top2:
    dec ecx
smp1_jcc2:
    jnz smp1_top2
    mov dx, 0xF5
    out dx, al
    LBR_OFF
    ret
    .globl smp0_top2, smp0_jcc2, smp1_top2, smp1_jcc2

/* Ring-3 bodies for rt_enter_user: an LBR MSR access at CPL3 must #GP (rt_enter_user then
   returns 13); reaching INT 0x80 means it did not. */
    .globl user_rdmsr_lbr_ctl, user_wrmsr_lbr_ctl
user_rdmsr_lbr_ctl:
    mov ecx, 0x14CE
    rdmsr
    int 0x80
user_wrmsr_lbr_ctl:
    mov ecx, 0x14CE
    mov eax, 0x7F0007
    xor edx, edx
    wrmsr
    int 0x80
