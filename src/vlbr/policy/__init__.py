"""KVM's rules for exposing Arch LBR to a guest, as pure functions of the host."""
