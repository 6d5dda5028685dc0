"""Channel 0 of the 8254 as Linux's i8253 clockevent programs it (drivers/clocksource/
i8253.c: periodic 0x34 + LATCH, one-shot 0x38 + delta, shutdown 0x30) and the 8254 data
sheet's counter-latch command."""

from vlbr.backends.pc.pit import CHANNEL0, MODE_PORT, Pit

LATCH = (1_193_182 + 125) // 250  # PIT_LATCH for HZ=250


def program(pit: Pit, mode: int, count: int, tick: int = 0) -> None:
    pit.out(MODE_PORT, mode, tick)
    pit.out(CHANNEL0, count & 0xFF, tick)
    pit.out(CHANNEL0, count >> 8, tick)


def test_periodic_mode_fires_every_latch_ticks():
    pit = Pit()
    program(pit, 0x34, LATCH, tick=100)
    assert pit.next_fire() == 100 + LATCH
    assert pit.advance(100 + 3 * LATCH) == 3
    assert pit.next_fire() == 100 + 4 * LATCH


def test_one_shot_fires_once():
    pit = Pit()
    program(pit, 0x38, 500)
    assert pit.advance(499) == 0
    assert pit.advance(10_000) == 1
    assert pit.next_fire() is None


def test_nothing_fires_before_the_second_byte_of_the_count():
    pit = Pit()
    pit.out(MODE_PORT, 0x34, 0)
    pit.out(CHANNEL0, LATCH & 0xFF, 0)
    assert pit.next_fire() is None


def test_shutdown_count_zero_means_65536():
    # Mode 0 with count 0 counts 65536 ticks (8254 data sheet), Linux's shutdown writes it.
    pit = Pit()
    program(pit, 0x30, 0, tick=7)
    assert pit.next_fire() == 7 + 0x10000


def test_the_latch_command_freezes_the_count_for_two_reads():
    pit = Pit()
    program(pit, 0x34, 1000)
    pit.out(MODE_PORT, 0x00, 250)  # latch channel 0
    low, high = pit.read(CHANNEL0, 900), pit.read(CHANNEL0, 950)
    assert low | high << 8 == 750
