"""guest/debian.py's apt commands, with the tools faked (no package is fetched here)."""

from __future__ import annotations

import pytest

from vlbr.guest import debian


@pytest.fixture
def calls(monkeypatch):
    seen, failing = [], set()

    def fake(args, where=None):
        seen.append(" ".join(args))
        if seen[-1] in failing:
            failing.discard(seen[-1])  # fails once: until the package lists exist
            raise debian.PackageUnavailable(f"{seen[-1]} failed: Unable to locate package")
        return "ok"
    monkeypatch.setattr(debian, "run_tool", fake)
    return seen, failing


def test_a_fresh_machine_gets_its_package_lists_then_the_command_again(calls):
    seen, failing = calls
    failing.add("apt-get install -y -qq linux-perf")
    debian.apt_install("linux-perf")
    assert seen == ["apt-get install -y -qq linux-perf", "apt-get update -qq",
                    "apt-get install -y -qq linux-perf"]


def test_a_command_that_works_runs_once(calls):
    seen, _ = calls
    assert debian.apt(["apt-cache", "depends", "busybox-static"]) == "ok"
    assert seen == ["apt-cache depends busybox-static"]


def test_a_missing_tool_is_named():
    with pytest.raises(debian.PackageUnavailable, match="no-such-tool-vlbr is not installed"):
        debian.run_tool(["no-such-tool-vlbr", "x"])


def test_a_failing_tool_names_the_command_and_its_last_line():
    with pytest.raises(debian.PackageUnavailable, match=r"sh -c .* failed: second"):
        debian.run_tool(["sh", "-c", "echo first >&2; echo second >&2; exit 3"])
