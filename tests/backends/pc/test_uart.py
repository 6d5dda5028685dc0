"""COM1 as Linux's 8250 driver probes it (drivers/tty/serial/8250/8250_port.c autoconfig():
IER scratch test, MCR loopback test, IIR[7:6] with FIFOs) and drives it (THRE interrupts)."""

from vlbr.backends.pc.uart import BASE, IER, IIR_FCR, LCR, LSR, MCR, MSR, RBR_THR, SCR, Uart


def uart():
    sent, irqs = bytearray(), []
    return Uart(sent.append, lambda: irqs.append(4)), sent, irqs


def test_ier_scratch_test():
    u, _, _ = uart()
    u.out(BASE + IER, 0)
    assert u.read(BASE + IER) & 0x0F == 0
    u.out(BASE + IER, 0x0F)
    assert u.read(BASE + IER) & 0x0F == 0x0F


def test_loopback_test_reads_0x90_and_sends_nothing():
    u, sent, _ = uart()
    u.out(BASE + MCR, 0x10 | 0x0A)  # LOOP | OUT2 | RTS
    assert u.read(BASE + MSR) & 0xF0 == 0x90
    u.out(BASE + RBR_THR, ord("x"))
    assert sent == b""


def test_fifos_show_in_iir_bits_7_6():
    u, _, _ = uart()
    u.out(BASE + IIR_FCR, 0x01)
    assert u.read(BASE + IIR_FCR) >> 6 == 3


def test_divisor_latch_and_scratch():
    u, _, _ = uart()
    u.out(BASE + LCR, 0x80)
    u.out(BASE + RBR_THR, 0x01)
    u.out(BASE + IER, 0x00)
    assert u.read(BASE + RBR_THR) == 1 and u.divisor == 1
    u.out(BASE + LCR, 0x03)
    u.out(BASE + SCR, 0x5A)
    assert u.read(BASE + SCR) == 0x5A


def test_thre_interrupt_on_enable_and_after_each_write_cleared_by_reading_iir():
    u, sent, irqs = uart()
    assert u.read(BASE + LSR) & 0x60 == 0x60
    u.out(BASE + IER, 0x02)
    assert irqs == [4]
    assert u.read(BASE + IIR_FCR) & 0x0F == 0x02
    assert u.read(BASE + IIR_FCR) & 0x01  # read once: no interrupt pending any more
    u.out(BASE + RBR_THR, ord("a"))
    assert sent == b"a" and irqs == [4, 4]
    u.out(BASE + IER, 0x00)
    u.out(BASE + RBR_THR, ord("b"))
    assert irqs == [4, 4]
