"""Scenario files: the host, its perf events, the vCPUs and a schedule, read and checked."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from vlbr.errors import VlbrError

# op -> the kinds of its arguments: v a vCPU, h a host event, c a pCPU, n a count, b a flag
OPS = {"run": "vc", "stop": "v", "lbr": "vb", "branch": "wn", "host-on": "hc",
       "host-off": "h", "debug": "v", "tick": "c", "read": "w"}
MAX_SCENARIO_BYTES = 4 << 20
_KIND_NAMES = {"v": "vCPU", "h": "host event", "w": "vCPU or host event"}


class ScenarioError(VlbrError):
    def __init__(self, source: str, problem: str):
        super().__init__(f"{source}: {problem}")


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    pcpus: int
    host_depth: int
    host_xss: int
    vcpus: dict  # name -> depth asked
    host_events: dict  # name -> description
    schedule: tuple  # (op, *args)
    lip_cpus: frozenset = frozenset()  # hybrid: pCPUs whose core type records linear IPs


def shipped() -> dict[str, Path]:
    folder = resources.files("vlbr.vcpu.hostsim") / "scenarios"
    return {p.name.removesuffix(".json"): Path(str(p)) for p in sorted(folder.iterdir(),
            key=lambda p: p.name) if p.name.endswith(".json")}


def load(name_or_path: str) -> Scenario:
    path = shipped().get(name_or_path) or Path(name_or_path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SCENARIO_BYTES + 1)  # a bound when the path is /dev/zero
        if len(raw) > MAX_SCENARIO_BYTES:
            raise ScenarioError(str(path), f"larger than {MAX_SCENARIO_BYTES >> 20} MiB")
        data = json.loads(raw.decode())
    except OSError as err:
        raise ScenarioError(str(path), err.strerror or str(err)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ScenarioError(str(path), f"not JSON: {err}") from None
    try:
        return parse(data, path.name.removesuffix(".json"))
    except (KeyError, TypeError, ValueError) as err:
        raise ScenarioError(str(path), _problem(err)) from None


def _problem(err: Exception) -> str:
    return f"missing key {err}" if isinstance(err, KeyError) else str(err)


def parse(data: dict, default_name: str) -> Scenario:
    if not isinstance(data, dict):
        raise ValueError("a scenario is a JSON object")
    s = Scenario(str(data.get("name", default_name)), str(data.get("description", "")),
                 _int(data["pcpus"], "pcpus", 1, 256), _int(data.get("host_depth", 32),
                 "host_depth", 8, 64), _int(data.get("host_xss", 1 << 15), "host_xss", 0,
                 2**64 - 1), {str(k): _int(v, f"vcpus.{k}", 8, 64) for k, v in
                 _dict(data["vcpus"], "vcpus").items()},
                 dict(_dict(data.get("host_events", {}), "host_events")), ())
    steps = tuple(_step(s, i, step) for i, step in enumerate(_list(data["schedule"], "schedule")))
    lip = frozenset(_int(c, "lip_cpus", 0, s.pcpus - 1)
                    for c in _list(data.get("lip_cpus", []), "lip_cpus"))
    return Scenario(**{**s.__dict__, "schedule": steps, "lip_cpus": lip})


def _step(s: Scenario, i: int, step) -> tuple:
    if not isinstance(step, list) or not step or step[0] not in OPS:
        raise ValueError(f"schedule[{i}]: not [OP, ARGS...] with OP one of {', '.join(OPS)}")
    kinds = OPS[step[0]]
    if len(step) != 1 + len(kinds):
        raise ValueError(f"schedule[{i}]: {step[0]} takes {len(kinds)} arguments")
    return (step[0], *(_arg(s, i, k, a) for k, a in zip(kinds, step[1:])))


def _arg(s: Scenario, i: int, kind: str, a):
    names = {"v": s.vcpus, "h": s.host_events, "w": {**s.vcpus, **s.host_events}}.get(kind)
    if names is not None:
        if a not in names:
            raise ValueError(f"schedule[{i}]: {a!r} is not a declared {_KIND_NAMES[kind]}")
        return a
    if kind == "b":
        if not isinstance(a, bool):
            raise ValueError(f"schedule[{i}]: {a!r} is not true or false")
        return a
    return _int(a, f"schedule[{i}]", 0, s.pcpus - 1 if kind == "c" else 10**6)


def _int(v, what: str, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ValueError(f"{what}: {v!r} is not an integer in {lo}..{hi}")
    return v


def _dict(v, what: str) -> dict:
    if not isinstance(v, dict):
        raise ValueError(f"{what}: not an object")
    return v


def _list(v, what: str) -> list:
    if not isinstance(v, list):
        raise ValueError(f"{what}: not a list")
    return v
