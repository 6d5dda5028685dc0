"""codewatch.candidate_starts: every start of a routed instruction (RDMSR 0F 32, WRMSR 0F 30,
XSETBV 0F 01 D1, XSAVES 0F C7 /5, XRSTORS 0F C7 /3; SDM Vol. 2 opcode maps) is hooked,
wherever it sits in arbitrary bytes and whatever legacy/REX prefixes precede it."""

import iced_x86
from hypothesis import given, settings
from hypothesis import strategies as st

from vlbr.backends.software.codewatch import PREFIXES, candidate_starts

ROUTED = {iced_x86.Mnemonic.RDMSR, iced_x86.Mnemonic.WRMSR, iced_x86.Mnemonic.XSETBV,
          iced_x86.Mnemonic.XSAVES, iced_x86.Mnemonic.XSAVES64, iced_x86.Mnemonic.XRSTORS,
          iced_x86.Mnemonic.XRSTORS64}
OPCODES = [b"\x0f\x32", b"\x0f\x30", b"\x0f\x01\xd1", b"\x0f\xc7\x28", b"\x0f\xc7\x18",
           b"\x0f\xc7\x6f\x10", b"\x0f\xc7\x1c\x24"]


@settings(max_examples=200)
@given(st.binary(max_size=64), st.lists(st.sampled_from(sorted(PREFIXES)), max_size=4),
       st.sampled_from(OPCODES), st.binary(max_size=16))
def test_every_routed_instruction_start_is_a_candidate(before, prefixes, opcode, after):
    data = before + bytes(prefixes) + opcode + after
    start = 0x1000 + len(before)
    insn = iced_x86.Decoder(64, data[len(before):], ip=start).decode()
    candidates = candidate_starts(data, 0x1000)
    if insn.mnemonic in ROUTED:
        assert start in candidates


@settings(max_examples=100)
@given(st.binary(min_size=1, max_size=256))
def test_decoding_from_any_offset_never_finds_a_routed_instruction_off_the_candidates(data):
    candidates = candidate_starts(data, 0)
    for offset in range(len(data)):
        insn = iced_x86.Decoder(64, data[offset:], ip=offset).decode()
        if insn.mnemonic in ROUTED:
            assert offset in candidates


def test_register_forms_of_0f_c7_are_not_candidates():
    # 0F C7 /6 with mod=11 is RDRAND, /7 RDSEED: never routed (SDM Vol. 2, RDRAND)
    assert candidate_starts(b"\x0f\xc7\xf0\x0f\xc7\xf8", 0) == set()
