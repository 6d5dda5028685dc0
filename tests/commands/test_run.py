"""`vlbr run`: CPUID 0x1C, console and a symbolized LBR stack, from a stand-in backend whose
vCPUs are the real vlbr.vcpu model fed with hello's known loop."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vlbr import cli
from vlbr.arch.msrs import IA32_LBR_CTL, BranchType
from vlbr.backends.base import RunResult
from vlbr.commands import run as run_cmd
from vlbr.vcpu import ArchLbrVcpu, Branch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "guest"))
from known_loop import known_loop_branches  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")


class LoopBackend:
    """Runs nothing: each vCPU's model retires hello's known loop with LBR_CTL from the image."""

    name = "software"

    def __init__(self):
        self.machines = []

    def unavailable_reason(self):
        return None

    def run(self, image, machine):
        self.machines.append(machine)
        vcpus = []
        for _ in range(machine.vcpus):
            vcpu = ArchLbrVcpu(machine.lbr)
            vcpu.wrmsr(IA32_LBR_CTL, image.read_u64("vlbr_lbr_ctl"))
            for frm, to, kind in known_loop_branches(image):
                vcpu.retire_branch(Branch(frm, to, kind, 0))
            vcpu.wrmsr(IA32_LBR_CTL, 0)
            vcpus.append(vcpu)
        return RunResult(["hello from the stand-in\n"] * machine.vcpus, [0] * machine.vcpus, vcpus, {})


@pytest.fixture
def backend(monkeypatch, tmp_path):
    monkeypatch.setenv("VLBR_CACHE_DIR", str(tmp_path / "cache"))
    fake = LoopBackend()
    monkeypatch.setattr(run_cmd, "pick_backend", lambda name: fake)
    return fake


def invoke(*args):
    return CliRunner().invoke(cli.group, ["run", *args], catch_exceptions=False)


def test_json_lists_the_known_loop_newest_first_with_symbols(backend):
    result = invoke("hello", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    records = doc["vcpus"][0]["records"]
    # known_loop's last taken branch is the ret from kl_leaf, its first the call into it.
    assert [r["from_symbol"] for r in records[:3]] == ["kl_leaf/kl_ret", "kl_call/kl_top", "kl_jcc"]
    assert records[0]["to_symbol"] == "kl_after_call"
    assert records[0]["type"] == "NEAR_RET" and records[2]["type"] == "JCC"
    assert len(records) == 8
    assert doc["cpuid_0x1c"]["depths"] == [32]  # --depth default, reference doc's depth 32
    assert doc["vcpus"][0]["console"].startswith("hello")


def test_lbr_ctl_reaches_the_guest_image(backend):
    only_calls = 0x1 | 0x2 | 1 << 19  # LBREn | OS | NEAR_REL_CALL (reference doc section 2)
    doc = json.loads(invoke("hello", "--lbr-ctl", hex(only_calls), "--json").output)
    assert doc["lbr_ctl"] == only_calls
    assert {r["type"] for r in doc["vcpus"][0]["records"]} == {"NEAR_REL_CALL"}
    assert len(doc["vcpus"][0]["records"]) == 3


def test_depth_option_sets_the_guest_cpuid(backend):
    doc = json.loads(invoke("hello", "--depth", "8", "--json").output)
    assert doc["cpuid_0x1c"]["depths"] == [8]
    assert backend.machines[-1].lbr.max_depth == 8


def test_suite_guest_runs_with_its_vcpu_count(backend):
    invoke("smp", "--json")
    assert backend.machines[-1].vcpus == 2


def test_table_output_names_symbols(backend):
    result = invoke("hello")
    assert result.exit_code == 0
    assert "CPUID.(0x1C,0)" in result.output
    assert "kl_after_call" in result.output and "NEAR_RET" in result.output


def test_svg_picture_holds_the_lbr_stack(backend, tmp_path):
    svg = tmp_path / "stack.svg"
    result = invoke("hello", "--svg", str(svg))
    assert result.exit_code == 0
    text = svg.read_text()
    assert text.startswith("<svg") and "kl_after_call" in text


def test_svg_to_an_unwritable_place_is_a_clear_error(backend, tmp_path):
    result = CliRunner().invoke(cli.group, ["run", "hello", "--svg", str(tmp_path / "no" / "x.svg")])
    assert result.exit_code != 0
    assert "cannot write" in result.output or "not writable" in result.output


def test_bad_lbr_ctl_is_a_usage_error(backend):
    result = CliRunner().invoke(cli.group, ["run", "hello", "--lbr-ctl", "lots"])
    assert result.exit_code == 2
    assert "not an integer" in result.output


def test_unknown_guest_is_a_clear_error(backend):
    result = CliRunner().invoke(cli.group, ["run", "nonesuch"])
    assert result.exit_code != 0
    assert "no guest 'nonesuch'" in str(result.exception) + result.output


@pytest.mark.parametrize("name", ["software", "kvm"])
def test_run_hello_on_a_real_backend(name, tmp_path, monkeypatch):
    from vlbr.guest.build import build_guest
    from vlbr.backends.registry import BackendNotLoadable, make_backend
    monkeypatch.setenv("VLBR_CACHE_DIR", str(tmp_path / "cache"))
    try:
        reason = make_backend(name).unavailable_reason()
    except BackendNotLoadable as err:
        reason = str(err)
    if reason:
        pytest.skip(f"backend {name} unavailable: {reason}")
    result = invoke("hello", "--backend", name, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["backend"] == name
    assert doc["vcpus"][0]["exit_status"] == 0
    image = build_guest("hello")
    want = [(frm, to) for frm, to, _ in reversed(known_loop_branches(image))]
    assert [(r["from"], r["to"]) for r in doc["vcpus"][0]["records"]] == want


@pytest.mark.parametrize("mode", ["hybrid", "step"])
def test_kvm_recording_option_reaches_the_machine(backend, mode):
    assert invoke("hello", "--kvm-recording", mode, "--json").exit_code == 0
    assert backend.machines[-1].kvm_recording == mode


def test_kvm_recording_defaults_to_hybrid(backend):
    invoke("hello", "--json")
    assert backend.machines[-1].kvm_recording == "hybrid"
