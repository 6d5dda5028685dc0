"""Guest images: built with the system gcc, linked at the ABI address, symbols that match code."""

from __future__ import annotations

import shutil
import struct

import iced_x86
import pytest

from vlbr.guest import build as guest_build
from vlbr.guest.build import GuestBuildError, build_guest, builtin_guests
from vlbr.backends.image import GuestImage, GuestImageError

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLBR_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def hello() -> GuestImage:
    return build_guest("hello", use_cache=False)


def instruction_at(image: GuestImage, symbol: str) -> iced_x86.Instruction:
    address = image.address(symbol)
    code = image.data[address - image.load_address:]
    return iced_x86.Decoder(64, code, ip=address).decode()


def test_hello_is_linked_at_the_abi_load_address(hello):
    # docs/design.md Guest ABI: "The image is loaded at 0x100000; entry = image entry".
    assert hello.load_address == 0x100000
    assert hello.entry == hello.address("_start") == 0x100000
    assert hello.name == "hello"


def test_every_runtime_symbol_lies_inside_the_image(hello):
    for name in ("_start", "rt_exception", "isr_13", "isr_user_return", "known_loop",
                 "vlbr_lbr_ctl", "guest_main"):
        assert hello.contains(hello.address(name)), name


def test_known_loop_labels_name_the_branches_they_claim(hello):
    # The conformance checks compute expected FROM/TO from these labels: decode the bytes
    # independently (iced-x86) to confirm each label is the branch it says and targets.
    call = instruction_at(hello, "kl_call")
    assert call.flow_control == iced_x86.FlowControl.CALL
    assert call.near_branch_target == hello.address("kl_leaf")
    assert call.next_ip == hello.address("kl_after_call")
    jcc = instruction_at(hello, "kl_jcc")
    assert jcc.flow_control == iced_x86.FlowControl.CONDITIONAL_BRANCH
    assert jcc.near_branch_target == hello.address("kl_top")
    assert instruction_at(hello, "kl_ret").flow_control == iced_x86.FlowControl.RETURN


def test_branch_zoo_has_one_branch_of_each_kind(hello):
    kinds = {
        "zoo_jcc": iced_x86.FlowControl.CONDITIONAL_BRANCH,
        "zoo_jmp_rel": iced_x86.FlowControl.UNCONDITIONAL_BRANCH,
        "zoo_jmp_ind": iced_x86.FlowControl.INDIRECT_BRANCH,
        "zoo_call_rel": iced_x86.FlowControl.CALL,
        "zoo_call_ind": iced_x86.FlowControl.INDIRECT_CALL,
        "zoo_ret_a": iced_x86.FlowControl.RETURN,
        "zoo_lret": iced_x86.FlowControl.RETURN,
    }
    for label, flow in kinds.items():
        assert instruction_at(hello, label).flow_control == flow, label
    assert instruction_at(hello, "zoo_lret").mnemonic == iced_x86.Mnemonic.RETF


def test_image_has_no_sse_or_cet_instructions(hello):
    # -mgeneral-regs-only and -fcf-protection=none: the guest runs before it enables anything
    # beyond the ABI's XCR0, and unicorn and KVM must agree on every instruction.
    decoder = iced_x86.Decoder(64, hello.data, ip=hello.load_address)
    text_end = hello.address("known_loop") + 0x400
    for insn in decoder:
        if insn.ip >= text_end:
            break
        assert insn.mnemonic != iced_x86.Mnemonic.ENDBR64


def test_lbr_ctl_variable_is_patched_by_symbol(hello):
    patched = hello.with_u64("vlbr_lbr_ctl", 0x10003)
    assert patched.read_u64("vlbr_lbr_ctl") == 0x10003
    offset = hello.address("vlbr_lbr_ctl") - hello.load_address
    assert struct.unpack_from("<Q", patched.data, offset)[0] == 0x10003
    assert hello.read_u64("vlbr_lbr_ctl") != 0x10003  # the original is untouched
    assert len(patched.data) == len(hello.data)


def test_symbolize_names_the_nearest_symbol(hello):
    assert hello.symbolize(hello.address("kl_jcc")) == "kl_jcc"
    assert hello.symbolize(hello.address("kl_jcc") + 1) == "kl_jcc+0x1"
    assert hello.symbolize(0x10) is None


def test_unknown_symbol_and_guest_are_clear_errors(hello):
    with pytest.raises(GuestImageError, match="no_such"):
        hello.address("no_such")
    with pytest.raises(GuestBuildError, match="no guest"):
        build_guest("no-such-guest")


def test_cache_returns_the_same_image(tmp_path):
    first = build_guest("hello")
    assert any((tmp_path / "cache").iterdir())
    second = build_guest("hello")
    assert second == first


def test_a_c_file_path_builds_with_the_runtime(tmp_path):
    src = tmp_path / "mine.c"
    src.write_text('#include "runtime.h"\nint guest_main(int cpu, int n) { rt_puts("hi\\n"); return 3; }\n')
    image = build_guest(src)
    assert image.name == "mine"
    assert image.contains(image.address("guest_main"))


def test_compile_errors_carry_gcc_output(tmp_path):
    src = tmp_path / "broken.c"
    src.write_text("int guest_main(int cpu, int n) { return undefined_thing; }\n")
    with pytest.raises(GuestBuildError, match="undefined_thing"):
        build_guest(src)


def test_builtin_guests_include_hello():
    assert "hello" in builtin_guests()
    assert guest_build.SOURCE_DIR.joinpath("hello.c").is_file()
