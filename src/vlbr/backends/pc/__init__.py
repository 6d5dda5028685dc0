"""The PC platform a Linux guest boots on (issue 11, in progress): the bzImage, the zero page,
the initramfs format, the 64-bit boot layout, and a unicorn run loop that reaches /init."""
