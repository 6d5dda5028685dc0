"""x86-64 architectural constants every layer shares, each named once (Intel SDM vol. 3A
unless noted): the longest instruction, exception vectors, RFLAGS, CR0/CR4, EFER, XCR0/XSS
components, the SYSCALL MSRs and the CPUID.1 feature bits the backends act on."""

from __future__ import annotations

# The longest instruction, in bytes (SDM vol. 2A, 2.3.11).
MAX_INSN = 15

# Exception vectors (SDM 6.3.1) and those that push an error code (SDM 6.13).
VECTOR_DE, VECTOR_DB, VECTOR_NMI, VECTOR_BP, VECTOR_OF, VECTOR_BR = 0, 1, 2, 3, 4, 5
VECTOR_UD, VECTOR_NM, VECTOR_DF, VECTOR_TS, VECTOR_NP, VECTOR_SS = 6, 7, 8, 10, 11, 12
VECTOR_GP, VECTOR_PF, VECTOR_MF, VECTOR_AC, VECTOR_MC, VECTOR_XM = 13, 14, 16, 17, 18, 19
VECTOR_CP, VECTOR_VC, VECTOR_SX = 21, 29, 30
VECTORS_WITH_ERROR_CODE = frozenset([VECTOR_DF, VECTOR_TS, VECTOR_NP, VECTOR_SS, VECTOR_GP,
                                     VECTOR_PF, VECTOR_AC, VECTOR_CP, VECTOR_VC, VECTOR_SX])
EXCEPTION_NAMES = {VECTOR_DE: "#DE", VECTOR_DB: "#DB", VECTOR_NMI: "NMI", VECTOR_BP: "#BP",
                   VECTOR_OF: "#OF", VECTOR_BR: "#BR", VECTOR_UD: "#UD", VECTOR_NM: "#NM",
                   VECTOR_DF: "#DF", VECTOR_TS: "#TS", VECTOR_NP: "#NP", VECTOR_SS: "#SS",
                   VECTOR_GP: "#GP", VECTOR_PF: "#PF", VECTOR_MF: "#MF", VECTOR_AC: "#AC",
                   VECTOR_MC: "#MC", VECTOR_XM: "#XM"}

# Error code of a fault on an IDT gate (SDM 6.13): vector * 8 | IDT | EXT.
ERROR_CODE_EXT, ERROR_CODE_IDT = 1 << 0, 1 << 1

# #PF error code bits (SDM 4.7).
PF_PRESENT, PF_WRITE, PF_USER, PF_RESERVED, PF_FETCH = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4

# RFLAGS (SDM vol. 1, 3.4.3).
RFLAGS_CF, RFLAGS_FIXED, RFLAGS_PF, RFLAGS_ZF, RFLAGS_SF = 1 << 0, 1 << 1, 1 << 2, 1 << 6, 1 << 7
RFLAGS_TF, RFLAGS_IF, RFLAGS_OF, RFLAGS_NT = 1 << 8, 1 << 9, 1 << 11, 1 << 14
RFLAGS_RF, RFLAGS_VM = 1 << 16, 1 << 17

# Paging-structure entry bits (SDM 4.5).
PTE_P, PTE_RW, PTE_US, PTE_PS = 1 << 0, 1 << 1, 1 << 2, 1 << 7
PTE_NX = 1 << 63
PTE_ADDRESS = ((1 << 52) - 1) & ~0xFFF  # bits 51:12 of an entry

# CR0 / CR4 (SDM 2.5).
CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1 << 0, 1 << 1, 1 << 4, 1 << 5, 1 << 16, 1 << 31
CR4_TSD, CR4_PAE, CR4_PCE, CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_OSXSAVE = (1 << 2, 1 << 5, 1 << 8, 1 << 9,
                                                                 1 << 10, 1 << 18)
CR4_SMEP = 1 << 20

# IA32_EFER and the SYSCALL/SYSRET MSRs (SDM vol. 4, SDM vol. 2B SYSCALL).
MSR_EFER, MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_FMASK = (0xC000_0080, 0xC000_0081, 0xC000_0082,
                                                       0xC000_0083, 0xC000_0084)
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1 << 0, 1 << 8, 1 << 10, 1 << 11
IA32_APIC_BASE = 0x1B  # the local APIC's base address and enables (SDM 11.4.4)

# XSAVE state components in XCR0 (user) and IA32_XSS (supervisor) (SDM vol. 1, 13.1).
XFEATURE_X87, XFEATURE_SSE, XFEATURE_AVX = 1 << 0, 1 << 1, 1 << 2
XFEATURES_LEGACY = XFEATURE_X87 | XFEATURE_SSE  # the 512-byte legacy region
MXCSR_RESET = 0x1F80  # all SIMD exceptions masked, round to nearest (SDM vol. 1, 10.2.3)

# CPUID.1:ECX feature bits (SDM vol. 2A, CPUID).
CPUID1_ECX_PDCM = 1 << 15
CPUID1_ECX_XSAVE = 1 << 26
CPUID1_ECX_OSXSAVE = 1 << 27
CPUID1_ECX_HYPERVISOR = 1 << 31
# CPUID.(0xD,1):EAX.
CPUID_D1_EAX_XSAVEC = 1 << 1
CPUID_D1_EAX_XSAVES = 1 << 3
