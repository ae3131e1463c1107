"""The soak scenario counts what fires during its window: a lockup that
starts while it watches must fail it (with the count), so a quiet soak
means something."""
from conftest import DETECTOR
from harness import expectations, scenarios
from harness.machine import MachineSpec

SPEC = MachineSpec(cpus=2, **expectations.machine_defaults(DETECTOR))


def test_soak_counts_a_lockup_during_its_window(pool):
    guest = pool.get(DETECTOR, SPEC)
    # Starts 2 s into the soak, from the guest itself: no host timing.
    guest.send("sh -c 'sleep 2; " + scenarios.inject_command("lockup_inject", "irqoff", 1, 6000)
               .replace("'", "") + "'")
    result = scenarios.soak(guest, 15)
    assert not result.passed
    assert result.measurements["by_kind"].get("hard_lockup", 0) >= 1, result
    assert result.reason.startswith(f"{result.measurements['false_positives']} false positives")
    pool.retire()
