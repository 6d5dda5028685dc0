"""vlbr.guest.linux without booting: the workload build and the exit-status protocol of the
initramfs's /init (guest/initramfs.py prints EXIT_MARK and the status)."""

import io

import pytest
from elftools.elf.elffile import ELFFile

from vlbr.guest.initramfs import EXIT_MARK, INIT_SCRIPT
from vlbr.guest.linux import WorkloadBuildError, compile_workload, exit_status


def test_the_exit_status_is_the_last_mark_on_the_console():
    assert exit_status(f"boot\n{EXIT_MARK} 3\nmore\n{EXIT_MARK} 7\nreboot") == 7
    assert exit_status("no mark here") is None


def test_init_prints_the_mark_with_the_workloads_status():
    assert f'echo "{EXIT_MARK} $?"' in INIT_SCRIPT


def test_a_workload_is_a_static_elf(tmp_path):
    source = tmp_path / "w.c"
    source.write_text("int main(void) { return 3; }\n")
    elf = compile_workload(source)
    f = ELFFile(io.BytesIO(elf))
    assert f["e_machine"] == "EM_X86_64"
    # static: no program interpreter and no dynamic section (the initramfs has no ld.so)
    assert not any(seg["p_type"] in ("PT_INTERP", "PT_DYNAMIC") for seg in f.iter_segments())


def test_a_program_gcc_rejects_names_the_file(tmp_path):
    source = tmp_path / "bad.c"
    source.write_text("int main(void) { return }\n")
    with pytest.raises(WorkloadBuildError, match="bad.c"):
        compile_workload(source)
