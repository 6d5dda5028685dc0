"""Host-sharing scenarios as data: the shipped JSON files, their checks, and running one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from vlbr.errors import VlbrError

from .sharing import HOST, SHARING_VARIANTS, SharingSim

_OPS = {"run": ("vcpu",), "migrate": ("vcpu", "cpu"), "host_perf": ("cpu", "on"),
        "branches": ("who", "count"), "read": ("who",)}


class ScenarioError(VlbrError):
    """A scenario file that cannot be read or names things it does not define."""


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    cpu_depths: tuple[int, ...]
    host_xss_lbr: bool
    vcpus: dict[str, int]
    steps: tuple[dict, ...]


def shipped() -> list[Scenario]:
    folder = resources.files("vlbr.policy") / "scenarios"
    return sorted((_parse(f.name.removesuffix(".json"), f.read_text(), f.name)
                   for f in folder.iterdir() if f.name.endswith(".json")), key=lambda s: s.name)


def load(name_or_path: str) -> Scenario:
    """A shipped scenario by name, else a JSON file."""
    for scenario in shipped():
        if scenario.name == name_or_path:
            return scenario
    path = Path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        known = ", ".join(s.name for s in shipped())
        reason = getattr(err, "strerror", None) or str(err)
        raise ScenarioError(f"{path}: not a shipped scenario ({known}) nor a readable file: "
                            f"{reason}") from None
    return _parse(path.stem, text, str(path))


def _parse(name: str, text: str, where: str) -> Scenario:
    try:
        data = json.loads(text)
        scenario = Scenario(name, str(data.get("description", "")),
                            tuple(data["cpu_depths"]), bool(data.get("host_xss_lbr", False)),
                            dict(data["vcpus"]), tuple(data["steps"]))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ScenarioError(f"{where}: not a scenario ({type(err).__name__}: {err})") from None
    if not scenario.cpu_depths or any(not isinstance(d, int) or d not in range(8, 65, 8)
                                      for d in scenario.cpu_depths):
        raise ScenarioError(f"{where}: cpu_depths must be Arch LBR depths (8..64, step 8)")
    for i, step in enumerate(scenario.steps):
        missing = [k for k in _OPS.get(step.get("op") if isinstance(step, dict) else None, ())
                   if k not in step]
        if not isinstance(step, dict) or step.get("op") not in _OPS or missing:
            raise ScenarioError(f"{where}: step {i}: want one of {', '.join(_OPS)} with "
                                f"its fields ({', '.join(missing) or 'op'} missing)")
    return scenario


def simulate(scenario: Scenario, variant: str) -> dict:
    """Run every step under one variant; the figures `vlbr host-sim --json` prints."""
    sim = SharingSim(variant, list(scenario.cpu_depths), scenario.host_xss_lbr)
    try:
        for name, cpu in scenario.vcpus.items():
            sim.add_vcpu(name, cpu)
        for i, step in enumerate(scenario.steps):
            _apply(sim, step, i)
    except ValueError as err:
        raise ScenarioError(f"{scenario.name}: {err}") from None
    return sim.result()


def _apply(sim: SharingSim, step: dict, index: int) -> None:
    op = step["op"]
    try:
        if op == "run":
            sim.run(step["vcpu"])
        elif op == "migrate":
            sim.migrate(step["vcpu"], step["cpu"])
        elif op == "host_perf":
            sim.host_perf(step["cpu"], bool(step["on"]))
        elif op == "branches":
            count = step["count"]
            if not isinstance(count, int) or count < 0:
                raise ValueError(f"count {count!r} is not a branch count")
            sim.branches(step["who"], count, step.get("cpu"))
        else:
            sim.read(step["who"], step.get("cpu"))
    except ValueError as err:
        raise ValueError(f"step {index} ({op}): {err}") from None


def simulate_all(scenario: Scenario, variants: tuple[str, ...] = SHARING_VARIANTS) -> dict:
    return {"scenario": scenario.name,
            "variants": {v: simulate(scenario, v) for v in variants}}


__all__ = ["HOST", "Scenario", "ScenarioError", "load", "shipped", "simulate", "simulate_all"]
