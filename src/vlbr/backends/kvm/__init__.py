"""The KVM API backend: Vm/Vcpu ioctl objects, the long-mode machine, the MSR-routing runner."""

from vlbr.backends.kvm.backend import KvmBackend

__all__ = ["KvmBackend"]
