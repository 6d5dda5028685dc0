"""The 8259A pair as Linux's arch/x86/kernel/i8259.c drives it (probe_8259A, init_8259A,
mask_and_ack_8259A) and the 8259A data sheet's ICW/OCW encodings."""

from vlbr.backends.pc.pic import DualPic, MASTER_CMD, MASTER_DATA, SLAVE_CMD, SLAVE_DATA


def linux_init(pic: DualPic) -> None:
    """init_8259A(0): mask all, ICW1 0x11, ICW2 vector base, ICW3 cascade, ICW4 0x01."""
    pic.out(MASTER_DATA, 0xFF)
    pic.out(SLAVE_DATA, 0xFF)
    pic.out(MASTER_CMD, 0x11)
    pic.out(MASTER_DATA, 0x30)
    pic.out(MASTER_DATA, 1 << 2)
    pic.out(MASTER_DATA, 0x01)
    pic.out(SLAVE_CMD, 0x11)
    pic.out(SLAVE_DATA, 0x38)
    pic.out(SLAVE_DATA, 2)
    pic.out(SLAVE_DATA, 0x01)
    pic.out(MASTER_DATA, 0xFB)  # all masked but the cascade
    pic.out(SLAVE_DATA, 0xFF)


def test_probe_reads_back_the_mask():
    # probe_8259A(): a mask written to the data port reads back, else Linux uses no PIC.
    pic = DualPic()
    pic.out(SLAVE_DATA, 0xFF)
    pic.out(MASTER_DATA, 0xFB)
    assert pic.read(MASTER_DATA) == 0xFB


def test_initialisation_sets_the_vector_base_and_keeps_the_mask_port_for_ocw1():
    pic = DualPic()
    linux_init(pic)
    assert pic.read(MASTER_DATA) == 0xFB and pic.read(SLAVE_DATA) == 0xFF
    pic.out(MASTER_DATA, 0xFA)  # unmask IRQ 0
    pic.raise_irq(0)
    assert pic.acknowledge() == 0x30


def test_a_masked_input_waits_and_a_lower_number_wins():
    pic = DualPic()
    linux_init(pic)
    pic.raise_irq(4)
    assert not pic.pending()
    pic.out(MASTER_DATA, 0xEA)  # unmask 0 and 4
    pic.raise_irq(0)
    assert pic.acknowledge() == 0x30
    # IRQ 0 in service blocks IRQ 4 (fixed priority) until its EOI.
    assert not pic.pending()
    pic.out(MASTER_CMD, 0x60)  # specific EOI for IRQ 0, as mask_and_ack_8259A sends
    assert pic.acknowledge() == 0x34


def test_non_specific_eoi_clears_the_highest_priority_in_service():
    pic = DualPic()
    linux_init(pic)
    pic.out(MASTER_DATA, 0x00)
    pic.raise_irq(3)
    assert pic.acknowledge() == 0x33
    pic.out(MASTER_CMD, 0x0B)  # OCW3: read ISR
    assert pic.read(MASTER_CMD) == 1 << 3
    pic.out(MASTER_CMD, 0x20)
    assert pic.read(MASTER_CMD) == 0
    pic.out(MASTER_CMD, 0x0A)  # OCW3: read IRR
    pic.raise_irq(5)
    assert pic.read(MASTER_CMD) == 1 << 5


def test_a_slave_input_arrives_through_the_cascade():
    pic = DualPic()
    linux_init(pic)
    pic.out(SLAVE_DATA, 0xFE)  # unmask IRQ 8
    pic.raise_irq(8)
    assert pic.acknowledge() == 0x38
    pic.out(MASTER_CMD, 0x0B)
    assert pic.read(MASTER_CMD) == 1 << 2  # the cascade input is in service on the master
