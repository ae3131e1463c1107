"""Scenario tests on real guests: boot, idle, hard and soft lockups, panic.

Every machine spec is 1, 2, 4 or 8 vCPUs with the IOMMU off or on
(intel-iommu,intremap=on). Cases on the same spec run back to back on one
guest; the panic cases need a guest of their own each. Lockups come from our
lockup_inject module; the kernel's test_lockup and LKDTM run on a few specs.
"""
import pytest

from harness import scenarios
from harness.machine import MachineSpec

from conftest import DETECTOR

CPU_COUNTS = (1, 2, 4, 8)
SPECS = [MachineSpec(cpus=c, iommu=i).validate() for c in CPU_COUNTS for i in (False, True)]


def _cases():
    for spec in SPECS:
        yield spec, "boot", None
        yield spec, "idle", None
        for cpu in scenarios.spread_cpus(spec.cpus):
            yield spec, "hard-lockup", cpu
        yield spec, "soft-lockup", spec.cpus - 1
    for spec in SPECS:
        yield spec.with_(hardlockup_panic=True), "hard-lockup", spec.cpus - 1
    # The kernel's own injectors, on a few specs. LKDTM lockups never end, so
    # each of those retires its guest.
    for spec in (MachineSpec(cpus=4), MachineSpec(cpus=2, iommu=True)):
        yield spec, "hard-lockup-test_lockup", spec.cpus - 1
        yield spec, "soft-lockup-test_lockup", 0
    four = MachineSpec(cpus=4)
    for i, crash in enumerate(("lkdtm-hardlockup", "lkdtm-softlockup",
                               "lkdtm-spinlockup", "lkdtm-hung-task")):
        yield four, crash, (i + 1) % four.cpus
    yield MachineSpec(cpus=8, iommu=True), "lkdtm-hardlockup", 5


CASES = list(_cases())


def _id(case):
    spec, name, cpu = case
    return f"{spec.label()}/{name}" + (f"@cpu{cpu}" if cpu is not None else "")


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_scenario(case, pool, record):
    spec, name, cpu = case
    guest = pool.get(spec)
    result = scenarios.get(name)(guest, DETECTOR, cpu)
    record(result)
    assert result.passed, (f"{result.reason}\n--- console tail ({guest.console.path}) ---\n"
                           + guest.console.tail(25))
