"""Guest programs, their freestanding runtime, and the Arch LBR conformance suite."""
