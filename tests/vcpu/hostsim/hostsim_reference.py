"""A plain reference model of mainline's guest LBR event: record counts only, no tags.

Written from ../shared/docs/arch-lbr-reference.md section 7 (arch/x86/kvm/vmx/pmu_intel.c)
independently of vlbr.vcpu.hostsim.model: it predicts how many records each guest loses.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass
class G:
    depth: int
    held: int = 0  # records in the hardware or in the XSAVES area
    lbr_en: bool = False
    event: bool = False
    used: bool = False
    cpu: int | None = None


class Reference:
    def __init__(self, pcpus: int, host_depth: int, vcpus: dict):
        self.host_depth = host_depth
        self.g = {n: G(d) for n, d in vcpus.items()}
        self.host: list[str | None] = [None] * pcpus
        self.lost: Counter = Counter()

    def _active(self, n: str) -> bool:
        g = self.g[n]
        return g.cpu is not None and g.event and self.host[g.cpu] is None

    def _on_cpu(self, c: int) -> str | None:
        return next((n for n, g in self.g.items() if g.cpu == c), None)

    def _activated(self, n: str) -> None:
        """XRSTORS of a depth other than the host's (perf's) clears what was saved."""
        g = self.g[n]
        if self._active(n) and g.depth != self.host_depth:
            self.lost[n] += g.held
            g.held = 0

    def run(self, n: str, c: int) -> None:
        other = self._on_cpu(c)
        if other not in (None, n):
            self.g[other].cpu = None
        if self.g[n].cpu != c:
            self.g[n].cpu = c
            self._activated(n)

    def stop(self, n: str) -> None:
        self.g[n].cpu = None

    def lbr(self, n: str, on: bool) -> None:
        g = self.g[n]
        g.lbr_en, g.used = on, True
        if on and not g.event:
            g.event = True
            self._activated(n)

    def branch(self, who: str, k: int) -> None:
        if who not in self.g:
            return
        g = self.g[who]
        if g.cpu is None or not g.lbr_en:
            return
        if self._active(who):
            g.held = min(g.depth, g.held + k)
        else:
            self.lost[who] += k

    def host_on(self, h: str, c: int) -> None:
        self.host_off(h)
        if self.host[c] is not None:
            return
        n = self._on_cpu(c)
        if n is not None and self._active(n):
            self.lost[n] += self.g[n].held  # perf resets the LBR for its own event
            self.g[n].held = 0
        self.host[c] = h

    def host_off(self, h: str) -> None:
        if h in self.host:
            c = self.host.index(h)
            self.host[c] = None
            n = self._on_cpu(c)
            if n is not None:
                self._activated(n)

    def debug(self, n: str) -> None:
        self.g[n].lbr_en = False

    def tick(self, c: int) -> None:
        n = self._on_cpu(c)
        if n is None:
            return
        g = self.g[n]
        if g.event and not g.used and not g.lbr_en:
            self.lost[n] += g.held
            g.held, g.event = 0, False
        g.used = False

    def read(self, who: str) -> None:
        if who in self.g:
            self.g[who].used = True
