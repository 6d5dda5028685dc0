"""Guest-visible Arch LBR state and behaviour of one vCPU, independent of any backend."""
