"""`vlbr host-sim` through the installed script: listing, JSON, SVG, exit statuses."""

from __future__ import annotations

import json

import pytest

from vlbr_script import one_error_line, vlbr
from vlbr.vcpu.hostsim import MECHANISM_NAMES, shipped


def test_list_prints_every_shipped_scenario_name_first():
    done = vlbr("host-sim", "--list")
    assert done.returncode == 0, done.stderr
    names = [line.split()[0] for line in done.stdout.splitlines()]
    assert names == sorted(shipped()) and len(names) >= 7
    assert any("preempt" in n for n in names)


def test_json_of_the_preempt_scenario():
    """Issue 13 'Must show': crossed 0 for every variant, mainline-mechanism lost > 0, vlbr 0."""
    name = next(n for n in shipped() if "preempt" in n)
    done = vlbr("host-sim", name, "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["scenario"] == name and set(out["variants"]) == set(MECHANISM_NAMES)
    assert all(v["crossed"] == 0 for v in out["variants"].values())
    assert out["variants"]["mainline-mechanism"]["lost"] > 0
    assert out["variants"]["vlbr"]["lost"] == 0


def test_variant_option_limits_the_json():
    done = vlbr("host-sim", "lazy-release", "--variant", "v12", "--json")
    assert list(json.loads(done.stdout)["variants"]) == ["v12"]


def test_a_scenario_file_by_path_and_its_svg(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"pcpus": 1, "vcpus": {"g": 32}, "host_events": {"p": ""},
                                "schedule": [["run", "g", 0], ["lbr", "g", True],
                                             ["branch", "g", 3], ["host-on", "p", 0]]}))
    svg = tmp_path / "t.svg"
    done = vlbr("host-sim", path, "--svg", svg)
    assert done.returncode == 0, done.stderr
    assert "mainline-mechanism" in done.stdout and "lost 3" in done.stdout
    assert svg.read_text().lstrip().startswith("<svg") and "pCPU" in svg.read_text()


@pytest.mark.parametrize("text, problem", [
    ("{", "not JSON"),
    ('{"pcpus": 1, "vcpus": {}}', "missing key 'schedule'"),
    ('{"pcpus": 0, "vcpus": {}, "schedule": []}', "pcpus"),
    ('{"pcpus": 1, "vcpus": {"g": 32}, "schedule": [["fly", "g"]]}', "schedule[0]"),
    ('{"pcpus": 1, "vcpus": {"g": 32}, "schedule": [["run", "g", 3]]}', "schedule[0]"),
    ('{"pcpus": 1, "vcpus": {"g": 32}, "schedule": [["run", "h", 0]]}', "'h' is not"),
    ('[1]', "JSON object"),
])
def test_bad_scenario_files_are_one_line_errors(tmp_path, text, problem):
    path = tmp_path / "bad.json"
    path.write_text(text)
    line = one_error_line(vlbr("host-sim", path))
    assert line.startswith(f"vlbr: error: {path}: ") and problem in line


def test_json_with_svg_keeps_stdout_json(tmp_path):
    svg = tmp_path / "t.svg"
    done = vlbr("host-sim", "vcpu-migration", "--json", "--svg", svg)
    assert json.loads(done.stdout)["scenario"] == "vcpu-migration"
    assert "pCPU" in svg.read_text() and "vm0.vcpu0" in svg.read_text()


def test_dev_zero_and_a_directory_stop_at_once(tmp_path):
    assert "larger than" in one_error_line(vlbr("host-sim", "/dev/zero", timeout=20))
    assert str(tmp_path) in one_error_line(vlbr("host-sim", tmp_path))


def test_missing_scenario_and_no_argument_exit_2(tmp_path):
    assert str(tmp_path / "none") in one_error_line(vlbr("host-sim", tmp_path / "none"))
    one_error_line(vlbr("host-sim"))
