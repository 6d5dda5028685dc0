"""perf script's ip,brstack lines on a guest console, checked against ground-truth PMI
snapshots (guest/perf_samples.py). The line format is perf's own
(tools/perf/builtin-script.c perf_sample__fprintf_brstack: FROM/TO/flags, newest first)."""

from __future__ import annotations

from vlbr.backends.pc.ground_truth import PmiSnapshot
from vlbr.guest.perf_samples import check_samples, printed_samples

EDGE = (0x40169C, 0x401688)
ENTRY = "0x40169c/0x401688/P/-/-/0/COND"


def console(*samples: str) -> str:
    return "\n".join(["[    5.1] Run /init as init process", *samples, "vlbr-exit-status: 0"])


def snap(index: int, ip: int, expected, recorded=None) -> PmiSnapshot:
    expected = tuple(expected)
    return PmiSnapshot(index, 1000 * index, ip, expected,
                       expected if recorded is None else tuple(recorded), True)


def test_perf_scripts_lines_are_read_with_or_without_a_tag_and_time():
    text = console(f"           401697 {ENTRY}  {ENTRY}",
                   f"brstack a:      5.123456:   40168f {ENTRY}",
                   "perf record: 0", "0x1234/0x5678 is not a sample line")
    found = printed_samples(text)
    assert [(s.line, s.ip, s.stack) for s in found] == [(2, 0x401697, (EDGE, EDGE)),
                                                        (3, 0x40168F, (EDGE,))]


def test_every_sample_equal_to_its_pmi_passes():
    text = console(f"  401697 {' '.join([ENTRY] * 32)}", f"  401697 {' '.join([ENTRY] * 32)}")
    check = check_samples(text, [snap(0, 0x401697, [EDGE] * 32), snap(1, 0x401697, [EDGE] * 32),
                                 snap(2, 0x500000, [EDGE])])  # another event's PMI
    assert check.ok and check.samples == check.samples_matching == 2 and check.pmis == 3


def test_a_sample_that_differs_from_every_pmi_at_its_ip_is_a_mismatch():
    wrong = "0x40169c/0x401600/P/-/-/0/COND"
    text = console(f"  401697 {ENTRY} {wrong}")
    check = check_samples(text, [snap(0, 0x401697, [EDGE, EDGE])])
    assert not check.ok and check.samples_matching == 0
    assert check.mismatches == ["console line 2: the sample at 0x401697 has entry 1 "
                                "0x40169c->0x401600 where the ground truth has "
                                "0x40169c->0x401688"]


def test_one_pmi_cannot_stand_for_two_samples():
    text = console(f"  401697 {ENTRY}", f"  401697 {ENTRY}")
    check = check_samples(text, [snap(0, 0x401697, [EDGE])])
    assert check.samples_matching == 1 and not check.ok
    assert check.mismatches == ["console line 3: no PMI left at 0x401697"]


def test_a_pmi_whose_lbr_differs_from_the_ground_truth_fails_the_check():
    text = console(f"  401697 {ENTRY}")
    check = check_samples(text, [snap(0, 0x401697, [EDGE], recorded=[])])
    assert check.samples_matching == 1 and check.pmis_agreeing == 0 and not check.ok
    assert "PMI 0 at 0x401697: the LBR holds 0 entries" in check.mismatches[0]


def test_no_sample_on_the_console_is_not_a_pass():
    check = check_samples(console("perf record: 0"), [snap(0, 0x401697, [EDGE])])
    assert not check.ok and "no perf script -F ip,brstack lines" in check.summary()
