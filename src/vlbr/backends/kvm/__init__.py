"""The KVM API backend."""
