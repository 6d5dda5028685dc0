"""The backends by name: which exist, how to load one, and which `auto` picks."""

from __future__ import annotations

import importlib

from vlbr.backends.base import Backend
from vlbr.errors import VlbrError

BACKEND_NAMES = ("kvm", "software")


class UnknownBackend(VlbrError):
    """A backend name other than kvm or software."""


_BACKEND_CLASSES = {"kvm": "KvmBackend", "software": "SoftwareBackend"}


class BackendNotLoadable(VlbrError):
    """The backend's module or class cannot be imported."""


def make_backend(name: str) -> Backend:
    """A backend object by name (kvm or software)."""
    try:
        class_name = _BACKEND_CLASSES[name]
    except KeyError:
        raise UnknownBackend(f"unknown backend {name!r}: choose {' or '.join(BACKEND_NAMES)}") from None
    problems = []
    for module_name in (f"vlbr.backends.{name}", f"vlbr.backends.{name}.backend"):
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            problems.append(f"{module_name}: {err}")
            continue
        cls = getattr(module, class_name, None)
        if cls is not None:
            return cls()
        problems.append(f"{module_name} has no {class_name}")
    raise BackendNotLoadable(f"backend {name} cannot be loaded ({'; '.join(problems)})")


def pick_backend(name: str = "auto") -> Backend:
    """`auto`: kvm when it can run here, else software."""
    if name != "auto":
        return make_backend(name)
    kvm = make_backend("kvm")
    return kvm if kvm.unavailable_reason() is None else make_backend("software")
