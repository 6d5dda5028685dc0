"""The PC platform a Linux guest boots on (issue 11, in progress): the bzImage, the zero page,
the initramfs format and the 64-bit boot layout so far; no run loop yet."""
