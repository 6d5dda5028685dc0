"""A simulation's result as the numbers `vlbr host-sim` reports for one mechanism."""

from __future__ import annotations

from .model import simulate
from .scenario import Scenario
from .variants import MECHANISMS


def report(scenario: Scenario, name: str) -> dict:
    host = simulate(scenario, MECHANISMS[name])
    contexts = [*scenario.vcpus, *scenario.host_events]
    return {"lost": sum(host.lost.values()), "crossed": host.crossed,
            "lost_by_context": {c: host.lost[c] for c in contexts},
            "saves": host.saves, "xss_restored": host.xss_restored,
            "wrong_ip_form": host.wrong_ip_form,
            "guest_offered_arch_lbr": host.offered,
            "timeline": host.timeline}
