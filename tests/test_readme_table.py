"""benchmarks/readme_table.py: README's Benchmarks table from a `make bench` run's lines."""

from __future__ import annotations

import re

import pytest
from benchmark_module import BENCHMARKS, benchmark_module


KVM_CPL0 = "KVM recording at CPL0, hybrid / step (call-ret-Jcc loop, median of 5 whole runs each)"
KVM_RING3 = "KVM recording in ring 3, hybrid block ring / per-instruction hook (same loop)"


@pytest.fixture(scope="module")
def readme_table():
    with benchmark_module("readme_table") as module:
        yield module


def asked_for(readme_table) -> set[tuple[str, str]]:
    """Every (bench, figure) a row renders, read from the renderers' own calls."""
    import inspect
    source = inspect.getsource(readme_table)
    return set(re.findall(r"""f\(["']([a-z_]+)["'], ["']([^"']+)["']""", source))


def test_every_figure_a_row_shows_is_printed_by_a_benchmark(readme_table):
    sources = "\n".join(p.read_text() for p in BENCHMARKS.glob("bench_*.py"))
    asked = asked_for(readme_table)
    assert len(asked) >= 20
    for bench, figure in asked:
        assert f'"{bench}"' in sources, bench
        assert f'"{figure}"' in sources or f"'{figure}'" in sources, figure


def test_a_row_renders_its_figures_and_a_missing_one_says_why(readme_table):
    lines = [
        {"bench": "kvm", "figure": "recorded_branches_per_second", "value": 11_312_000.0,
         "ratio": 285.4},
        {"bench": "kvm", "figure": "recorded_branches_per_second_step", "value": 39_713.0},
        {"bench": "linux", "figure": "linux_boot_to_workload_seconds", "value": 29.3,
         "runner": "vlbr"},
        {"bench": "linux", "figure": "linux_boot_to_workload_seconds", "value": None,
         "runner": "qemu-tcg", "skipped": "qemu-system-x86 cannot be installed"},
        {"bench": "software", "skipped": "no unicorn"},
    ]
    rows = dict(re.findall(r"^\| (.+?) \| (.+) \|$", readme_table.table(lines), re.M))
    assert rows[KVM_CPL0] == "11.3 M / 39.7 k branches/s (ratio 285)"
    assert rows[KVM_RING3] == "not measured (no kvm recorded_branches_per_second_ring3 line)"
    boot = [v for k, v in rows.items() if k.startswith("Linux boot")][0]
    assert boot == "not measured (qemu-system-x86 cannot be installed)"
    clear = [v for k, v in rows.items() if k.startswith("software backend, LBREn clear")][0]
    assert clear == "not measured (no unicorn)"
    corpus = rows["corpus read, per dump"]
    assert corpus == "not measured (no corpus_read per_dump_mean line)"
    assert len(rows) == len(readme_table.ROWS) + 1  # and the header
