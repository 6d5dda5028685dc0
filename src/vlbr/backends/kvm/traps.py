"""INT n and SYSCALL turned into port exits, when quirk int_n_fails or user_syscall_fails.

Measured on kvm_pvm (quirks.py probes it): `INT n` (n != 3) ends in KVM_EXIT_INTERNAL_ERROR
(emulation failure) at CPL0 and raises #UD at CPL3; on an Intel host SYSCALL at CPL3 did not
reach the guest's IA32_LSTAR. Neither exits to user space at CPL3, so before loading the image vlbr
replaces each 2-byte `INT imm8` (CD ib) and SYSCALL (0F 05) with `OUT 0xF6, AL` (E6 F6): port
0xF6 is open to ring 3 in the Guest ABI's TSS I/O bitmap (with the exit port's 0xF4-0xF7), so
the OUT exits as KVM_EXIT_IO at any CPL and the runner performs the original instruction
(delivery through the guest IDT, or SYSCALL through STAR/LSTAR/FMASK). Found by the same linear
sweep as the CPUID patch (patching.py).
"""

from __future__ import annotations

from iced_x86 import Code, Instruction

from vlbr.backends.kvm.patching import patch_instructions

PORT_TRAP = 0xF6
OUT_TRAP = bytes([0xE6, PORT_TRAP])
# INT imm8 (CD ib) and SYSCALL (0F 05) -> OUT 0xF6, AL
TRAP_PATCHES = {Code.INT_IMM8: (0xCD, OUT_TRAP), Code.SYSCALL: (0x0F, OUT_TRAP)}


def patch_traps(data: bytes, base: int) -> tuple[bytes, dict[int, Instruction]]:
    """The image with each INT imm8 / SYSCALL replaced by OUT 0xF6, AL, and the originals by
    address."""
    return patch_instructions(data, base, [(base, base + len(data))], TRAP_PATCHES)
