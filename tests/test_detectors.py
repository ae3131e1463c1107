"""The Detector table (harness/detectors.py) is what kbuild, elfcheck and
expectations answer from: one change there changes all of them."""
import pytest

from harness import detectors, elfcheck, expectations, kbuild
from harness.errors import HarnessError
from harness.paths import KERNEL_CONFIG_DIR


def test_every_detector_has_its_kernel_fragments_and_defaults():
    assert kbuild.DETECTORS == tuple(detectors.DETECTORS) and kbuild.DEFAULT_DETECTOR == "hpet"
    for d in detectors.DETECTORS.values():
        assert d.kernel in kbuild.KERNELS
        assert all((KERNEL_CONFIG_DIR / f).is_file() for f in d.fragments)
        assert [p.name for p in kbuild.fragments_for(d.name)] == \
            [*kbuild.BASE_FRAGMENTS, *detectors.get(d.kernel).fragments]
        assert expectations.machine_defaults(d.name) == d.machine
        assert expectations.report_floor(d.name) == d.floor_x_thresh
        assert expectations.hard_lockup_bound_s(d.name, 3) == d.bound[0] * 3 + d.bound[1]
        assert elfcheck.DETECTOR_SYMBOLS.get(d.name) == d.symbol


def test_perf_runs_on_the_hpet_kernel_and_says_when_it_cannot_run():
    assert detectors.PERF.kernel == "hpet" and kbuild.KERNELS == ("hpet", "buddy")
    runs, why = expectations.detector_runs("perf", "... Perf NMI watchdog permanently disabled")
    assert not runs and "no PMU" in why
    assert expectations.detector_runs("hpet", "Perf NMI watchdog permanently disabled")[0]


def test_a_neighbour_watcher_misses_what_its_neighbour_cannot_see():
    assert not expectations.hard_lockup_visible("buddy", 1)[0]
    assert expectations.hard_lockup_visible("hpet", 1)[0]
    seen, _ = expectations.reported_when_locked("buddy", {1, 2}, 4)
    assert seen == {1}                 # 2's watcher (1) is locked too
    assert expectations.reported_when_locked("hpet", {1, 2}, 4)[0] == {1, 2}


def test_an_unknown_detector_is_one_error():
    with pytest.raises(HarnessError, match="unknown detector 'nmi'; known: hpet, buddy, perf"):
        detectors.get("nmi")
