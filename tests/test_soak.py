"""The soak scenario counts what fires during its window: a lockup that
starts while it watches must fail it (with the count), so a quiet soak
means something. And a quiet soak must come from an armed detector: one
switched off half-way must fail it too."""
import pytest

from harness import expectations, scenarios
from harness.machine import MachineSpec


@pytest.fixture
def guest(pool, detector):
    return pool.get(detector, MachineSpec(cpus=2, **expectations.machine_defaults(detector)))


def _later(guest, seconds: int, command: str) -> None:
    """Run `command` in the guest `seconds` from now: the guest keeps the
    time, not the host."""
    guest.send(f"sh -c 'sleep {seconds}; " + command.replace("'", "") + "' &")


def test_soak_counts_a_lockup_during_its_window(pool, guest, detector):
    # Held past the detector's latest report, and the window outlasts it:
    # a 6 s lockup once went unreported by buddy (worst case 7.1 s).
    bound = expectations.hard_lockup_bound_s(detector, guest.spec.watchdog_thresh)
    _later(guest, 2, scenarios.inject_command("lockup_inject", "irqoff", 1,
                                              int((bound + 1) * 1000)))
    result = scenarios.soak(guest, detector, 2 + bound + 3)
    assert not result.passed
    assert result.measurements["by_kind"].get("hard_lockup", 0) >= 1, result
    # It fired inside the window, so it is not a report from before it.
    assert "hard_lockup" not in result.measurements["before_soak"], result
    assert result.reason.startswith(f"{result.measurements['false_positives']} false positives")
    pool.retire()


def test_a_quiet_soak_ends_with_a_reported_lockup(pool, guest, detector):
    result = scenarios.soak(guest, detector, 6)
    assert result.passed, result
    assert result.measurements["false_positives"] == 0
    assert result.measurements["canary"]["passed"], result
    assert result.measurements["canary"]["latency_s"] is not None, result
    pool.retire()


def test_a_detector_switched_off_during_the_soak_fails_it(pool, guest, detector):
    _later(guest, 2, "echo 0 > /proc/sys/kernel/nmi_watchdog")
    result = scenarios.soak(guest, detector, 7)
    assert not result.passed, result
    assert result.measurements["false_positives"] == 0, result
    assert "did not stay armed" in result.reason or "after the soak" in result.reason, result
    pool.retire()
