"""The software CPU backend: guests on unicorn 2 with vlbr's Arch LBR model."""

from .backend import SoftwareBackend, SoftwareBackendError, SoftwareMachine

__all__ = ["SoftwareBackend", "SoftwareBackendError", "SoftwareMachine"]
