"""The PC platform a Linux guest boots on (work in progress: issue 11): the kernel image so far."""
