"""`vlbr host-sim` through the installed script: the issue's --list and --json contract, the
picture, and one-line errors."""

from __future__ import annotations

import json

from vlbr.policy.sharing import SHARING_VARIANTS
from vlbr.policy.sharing_scenarios import shipped

from vlbr_script import one_error_line, vlbr


def test_list_prints_each_shipped_scenario_name_first():
    done = vlbr("host-sim", "--list")
    assert done.returncode == 0
    names = [line.split()[0] for line in done.stdout.splitlines()]
    assert names == [s.name for s in shipped()]
    assert any("preempt" in n for n in names)


def test_json_of_the_preempt_scenario():
    name = next(s.name for s in shipped() if "preempt" in s.name)
    done = vlbr("host-sim", name, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["scenario"] == name
    assert sorted(result["variants"]) == sorted(SHARING_VARIANTS)
    assert all(v["crossed"] == 0 for v in result["variants"].values())
    assert result["variants"]["mainline-mechanism"]["lost"] > 0
    assert result["variants"]["vlbr"]["lost"] == 0


def test_variant_limits_the_json_to_one_design():
    done = vlbr("host-sim", "two-vcpus-one-cpu", "--json", "--variant", "v12")
    assert list(json.loads(done.stdout)["variants"]) == ["v12"]


def test_svg_timeline_names_every_owner(tmp_path):
    picture = tmp_path / "t.svg"
    done = vlbr("host-sim", "system-wide-host-perf", "--svg", picture)
    assert done.returncode == 0, done.stderr
    text = picture.read_text()
    assert "<svg" in text and "cpu1" in text and "vcpu1" in text


def test_a_scenario_file_from_the_user(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"cpu_depths": [8], "vcpus": {"g": 0}, "steps": [
        {"op": "run", "vcpu": "g"}, {"op": "branches", "who": "g", "count": 20},
        {"op": "host_perf", "cpu": 0, "on": True}, {"op": "read", "who": "g"}]}))
    result = json.loads(vlbr("host-sim", path, "--json").stdout)
    assert result["scenario"] == "mine"
    assert result["variants"]["mainline-mechanism"]["lost"] == 8


def test_bad_input_is_one_error_line(tmp_path):
    assert "no-such" in one_error_line(vlbr("host-sim", "no-such"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert str(bad) in one_error_line(vlbr("host-sim", bad))
    bad.write_text('{"cpu_depths": [32], "vcpus": {"g": 0}, "steps": '
                   '[{"op": "branches", "who": "g", "count": 1}]}')
    assert "not running" in one_error_line(vlbr("host-sim", bad))
    assert "SCENARIO" in one_error_line(vlbr("host-sim"))
    assert "--json" in one_error_line(vlbr("host-sim", "two-vcpus-one-cpu", "--json",
                                           "--svg", tmp_path / "x.svg"))
