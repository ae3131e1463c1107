"""What each hard lockup detector is, stated once: the kernel it runs on and
its config fragments (kbuild), the symbol that proves it is built in
(elfcheck), the machine it needs and the bounds its reports must keep
(expectations). Modules ask here instead of `if detector == "hpet"`.
"""
from dataclasses import dataclass, field

from harness.errors import HarnessError


@dataclass(frozen=True)
class Detector:
    name: str
    # The kernel build it runs on: its own, or another detector's (perf is
    # the HPET kernel's fallback when nmi_watchdog is not =hpet).
    kernel: str
    # Config fragments of that build, on top of kbuild.BASE_FRAGMENTS.
    fragments: tuple[str, ...]
    # A vmlinux symbol that exists only when the detector is built in.
    symbol: str | None
    # MachineSpec fields it needs.
    machine: dict = field(default_factory=dict)
    # Latest acceptable hard lockup report after the injection:
    # bound[0] * watchdog_thresh + bound[1] seconds.
    bound: tuple[float, float] = (2.0, 0.0)
    # Shortest interrupts-off section, in watchdog_thresh, it may report.
    floor_x_thresh: float = 1.0
    # Fraction of time in which it may take someone else's NMI as its own.
    claim_tolerance: float = 0.0
    # What the kernel prints at boot when it can never run here.
    off_message: str | None = None
    # It watches each CPU from the CPU before it, not from an NMI of its own.
    neighbour: bool = False
    # Its own watchdog NMIs per CPU per watchdog_thresh, if it has any.
    nmis_per_thresh: float | None = None
    # Its NMI comes from an HPET channel, whose interrupt path depends on the
    # APIC mode and the IOMMU (expectations.PATHS).
    hpet_channel: bool = False
    # Its debugfs directory (channel, handling_cpu, monitored_cpus, nmis...).
    debugfs: str | None = None


# hpet: one NMI every thresh seconds, and a lockup is declared at the first
# NMI that finds no hrtimer progress since the previous one: 2*thresh. It
# reports only after 7/5 thresh without a sign of life (floor 1), and claims
# its expiry from 1/128 of a period before the prediction. One expiry, then
# one broadcast, every watchdog_thresh/5: 5 NMIs per CPU per thresh.
HPET = Detector(
    "hpet", kernel="hpet", fragments=("hpet.config",), symbol="hld_nmi_handler",
    # FSB (MSI) capable channels beyond the 3 QEMU gives by default, and asked for
    machine={"hpet_msi": True, "hpet_timers": 8, "nmi_watchdog": "hpet"},
    bound=(2.0, 0.0), floor_x_thresh=1.0, claim_tolerance=1 / 128, nmis_per_thresh=5.0,
    hpet_channel=True, debugfs="/sys/kernel/debug/x86/hpet_hld")

# buddy: a CPU checks its neighbour every third hrtimer tick (period
# 2*thresh/5), and needs two checks without progress: at most about 3*thresh,
# plus a thresh of slack for TCG scheduling. Checking every 6/5 thresh, a
# section of 4/5 thresh can be reported at the worst phase.
BUDDY = Detector(
    "buddy", kernel="buddy", fragments=("buddy.config",),
    symbol="watchdog_buddy_check_hardlockup",
    bound=(4.0, 2.0), floor_x_thresh=0.8, neighbour=True)

# perf: the HPET rule on a PMU cycle counter's NMI, whose period in time
# follows the CPU's frequency: a second of slack (not measured here, where
# TCG has no PMU; KVM runners with a vPMU measure it). Checks at least 4/5
# thresh apart (watchdog_check_timestamp): floor 2/5. Without a PMU
# (kernel/watchdog_perf.c) it never runs, and the kernel says so at boot.
PERF = Detector(
    "perf", kernel="hpet", fragments=HPET.fragments, symbol=None,
    bound=(2.0, 1.0), floor_x_thresh=0.4,
    off_message="Perf NMI watchdog permanently disabled")

# The first is the default kernel's.
DETECTORS = {d.name: d for d in (HPET, BUDDY, PERF)}


@dataclass(frozen=True)
class Flavour:
    """A variant of a detector's kernel: its config fragments go on top of
    the detector's (the cache key, a hash of the fragments, keeps the builds
    apart). A machine names it (MachineSpec.flavour, matrix key `flavour`,
    `--flavour`); None is the detector's kernel as it is."""
    name: str
    fragments: tuple[str, ...]
    what: str
    # The detector the HPET kernel falls back to where the HPET one is not
    # used, or stops working: perf (with a PMU) unless the flavour says.
    fallback: str = "perf"


# debug: lockdep, DEBUG_ATOMIC_SLEEP, DEBUG_PREEMPT (kernel-config/debug.config);
# a report of theirs fails any case (harness/debug_checks.py).
DEBUG = Flavour("debug", ("debug.config",),
                "lockdep (PROVE_LOCKING, PROVE_RCU), DEBUG_ATOMIC_SLEEP, DEBUG_PREEMPT")
# kcsan: the kernel concurrency sanitizer (kernel-config/kcsan.config); a
# data race it reports fails any case (harness/debug_checks.py).
KCSAN = Flavour("kcsan", ("kcsan.config",), "KCSAN (data races, NMI and interrupt context too)")
# buddy-fallback: the HPET kernel preferring buddy (series patches 13-15),
# its fallback where there is no PMU, as under TCG (scenario detector-lost).
BUDDY_FALLBACK = Flavour("buddy-fallback", ("buddy-fallback.config",),
                         "the buddy detector as the HPET detector's fallback",
                         fallback="buddy")
FLAVOURS = {f.name: f for f in (DEBUG, KCSAN, BUDDY_FALLBACK)}


def fallback(flavour_name: str | None) -> str:
    """The detector the HPET kernel of that flavour falls back to."""
    f = flavour(flavour_name)
    return f.fallback if f else "perf"


def flavour(name: str | None) -> Flavour | None:
    """The flavour of that name (None and "default": the plain kernel), or
    one error line."""
    if name in (None, "default"):
        return None
    try:
        return FLAVOURS[name]
    except KeyError:
        raise HarnessError(f"unknown flavour {name!r}; known: default, "
                           f"{', '.join(FLAVOURS)}") from None


def with_flavour(detector: str, flavour_name: str | None = None) -> str:
    """A detector's kernel in a flavour, as a run names it (its table of
    built kernels, results.json's kernels): "hpet", "hpet+debug"."""
    return f"{detector}+{flavour_name}" if flavour(flavour_name) else detector


def get(name: str) -> Detector:
    try:
        return DETECTORS[name]
    except KeyError:
        raise HarnessError(f"unknown detector {name!r}; known: "
                           f"{', '.join(DETECTORS)}") from None
