"""Host perf and vCPUs sharing one LBR per physical CPU, simulated under each mechanism."""

from .model import Host, simulate
from .scenario import OPS, Scenario, ScenarioError, load, parse, shipped
from .variants import MECHANISM_NAMES, MECHANISMS, Mechanism
from .report import report

__all__ = ["Host", "MECHANISMS", "MECHANISM_NAMES", "Mechanism", "OPS", "Scenario",
           "ScenarioError", "load", "parse", "report", "shipped", "simulate"]
