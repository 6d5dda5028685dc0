"""A vCPU's final LBR stack as tools show it: records with decoded type and guest symbols."""

from __future__ import annotations

from dataclasses import dataclass

from vlbr.arch.msrs import BranchType, LbrInfo

from vlbr.backends.image import GuestImage


@dataclass(frozen=True)
class LbrRecord:
    index: int  # 0 = newest
    from_ip: int
    to_ip: int
    info: int
    from_symbol: str | None
    to_symbol: str | None

    @property
    def br_type(self) -> int:
        return LbrInfo.decode(self.info).br_type

    @property
    def type_name(self) -> str:
        t = self.br_type
        if t >= 8:
            return "OTHER"
        try:
            return BranchType(t).name
        except ValueError:
            return f"reserved({t})"

    def to_json(self) -> dict:
        return {"index": self.index, "from": self.from_ip, "to": self.to_ip, "info": self.info,
                "type": self.type_name, "from_symbol": self.from_symbol,
                "to_symbol": self.to_symbol}


def lbr_stack(records: list[tuple[int, int, int]], image: GuestImage | None = None) -> list[LbrRecord]:
    """The live (non-zero) records, newest first, symbolized against the image."""
    out = []
    for i, (frm, to, info) in enumerate(records):
        if not (frm or to or info):
            continue
        out.append(LbrRecord(i, frm, to, info,
                             image.symbolize(frm) if image else None,
                             image.symbolize(to) if image else None))
    return out
