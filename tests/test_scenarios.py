"""Scenario tests on real guests, for every detector in HARNESS_DETECTORS.

Every machine spec is 1, 2, 4 or 8 vCPUs with the IOMMU off or on
(intel-iommu,intremap=on), plus what the detector needs (expectations.
machine_defaults). Cases on the same detector and spec run back to back on
one guest; the panic cases need a guest of their own each. Lockups come from
our lockup_inject module; the kernel's test_lockup and LKDTM run on a few
specs.
"""
import pytest

from harness import catalog, expectations, scenarios
from harness.machine import MachineSpec

from conftest import DETECTORS

CPU_COUNTS = (1, 2, 4, 8)


def _spec(detector, **kw) -> MachineSpec:
    return MachineSpec(**expectations.machine_defaults(detector), **kw).validate()


def _lockup_cases(d):
    specs = [_spec(d, cpus=c, iommu=i) for c in CPU_COUNTS for i in (False, True)]
    for spec in specs:
        yield d, spec, "boot", None
        yield d, spec, "enabled", None
        yield d, spec, "idle", None
        # The detector under test gets every CPU in turn (the handling CPU
        # among them); the comparison detector first, middle and last.
        cpus = range(spec.cpus) if d == DETECTORS[0] else scenarios.spread_cpus(spec.cpus)
        for cpu in cpus:
            yield d, spec, "hard-lockup", cpu
        yield d, spec, "soft-lockup", spec.cpus - 1
        if spec.cpus > 1:
            yield d, spec, "all-but-one-locked", 0
            yield d, spec, "all-locked", None
    for spec in specs:
        yield d, spec.with_(hardlockup_panic=True), "hard-lockup", spec.cpus - 1


def _hpet_cases():
    """What only the HPET detector has: sockets, cpumask, run-time changes,
    its handling CPU, other NMI users, and declining cleanly."""
    d = "hpet"
    for cpus, sockets in ((2, 2), (4, 2), (4, 4), (8, 2), (8, 4)):
        # TCG's -cpu max is an AMD CPU without constant_tsc: with several
        # packages the kernel assumes unsynchronized TSCs and the detector
        # (rightly) declines. TCG's TSC is synchronized by construction.
        spec = _spec(d, cpus=cpus, sockets=sockets, cmdline_extra=("tsc=reliable",))
        yield d, spec, "boot", None
        yield d, spec, "enabled", None
        for cpu in scenarios.spread_cpus(cpus):
            yield d, spec, "hard-lockup", cpu
        yield d, spec, "cpumask-excluded", cpus - 1
    for iommu in (False, True):
        spec = _spec(d, cpus=4, iommu=iommu)
        yield d, spec, "sysrq-backtrace", None
        yield d, spec, "cpumask-excluded", 2
        yield d, spec, "handling-cpu-hotplug", None
        yield d, spec, "runtime-changes", None
        yield d, spec, "enabled", None     # still sane after all that
    base = _spec(d, cpus=2)
    for decline in (base.with_(hpet_msi=False), base.with_(hpet=False),
                    base.with_(cmdline_extra=("tsc=unstable",)),
                    base.with_(nmi_watchdog=None)):
        yield d, decline, "declines", None


def _injector_cases(d):
    # The kernel's own injectors, on a few specs. LKDTM lockups never end, so
    # each of those retires its guest.
    for spec in (_spec(d, cpus=4), _spec(d, cpus=2, iommu=True)):
        yield d, spec, "hard-lockup-test_lockup", spec.cpus - 1
        yield d, spec, "soft-lockup-test_lockup", 0
    four = _spec(d, cpus=4)
    for i, crash in enumerate(("lkdtm-hardlockup", "lkdtm-softlockup",
                               "lkdtm-spinlockup", "lkdtm-hung-task")):
        yield d, four, crash, (i + 1) % four.cpus
    yield d, _spec(d, cpus=8, iommu=True), "lkdtm-hardlockup", 5


def _cases():
    for d in DETECTORS:
        yield from _lockup_cases(d)
        yield from _injector_cases(d)
        if d == "hpet":
            yield from _hpet_cases()


CASES = list(_cases())


def _id(case):
    detector, spec, name, cpu = case
    return f"{detector}/{spec.label()}/{name}" + (f"@cpu{cpu}" if cpu is not None else "")


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_scenario(case, pool, record):
    detector, spec, name, cpu = case
    guest = pool.get(detector, spec)
    result = catalog.get(name)(guest, detector, cpu)
    record(result, detector)
    assert result.passed, (f"{result.reason}\n--- console tail ({guest.console.path}) ---\n"
                           + guest.console.tail(25))
