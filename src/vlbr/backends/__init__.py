"""Where guest code runs: KVM and a software CPU, both routing Arch LBR to vlbr.vcpu."""
