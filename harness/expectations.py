"""What each detector needs from the machine and can or cannot see, stated once.

Scenario verdicts ask here instead of special-casing detectors inline, so a
limitation (the buddy detector has no buddy on one CPU) is asserted as an
expectation rather than skipped.
"""

DETECTORS = ("hpet", "buddy", "perf")
# kernel/watchdog_perf.c when the CPU has no PMU (TCG): the perf detector
# never runs, and the kernel says so once at boot.
PERF_OFF = "Perf NMI watchdog permanently disabled"


def detector_runs(detector: str, console: str) -> tuple[bool, str]:
    """Can the detector run on this machine at all? From its boot console."""
    if detector == "perf" and PERF_OFF in console:
        return False, f"no PMU here (TCG): the kernel said '{PERF_OFF}'"
    return True, ""


def machine_defaults(detector: str) -> dict:
    """MachineSpec fields a detector needs: the HPET one wants FSB (MSI)
    capable channels beyond the 3 QEMU gives by default, and to be asked for."""
    if detector == "hpet":
        return {"hpet_msi": True, "hpet_timers": 8, "nmi_watchdog": "hpet"}
    return {}     # perf: the HPET kernel left to its default, the perf detector


def hard_lockup_visible(detector: str, cpus: int, console: str = "") -> tuple[bool, str]:
    runs, why = detector_runs(detector, console)
    if not runs:
        return False, why
    if detector == "buddy" and cpus < 2:
        return False, ("the buddy detector checks each CPU from its neighbour; "
                       "with one CPU there is none, so a hard lockup goes unreported")
    return True, f"the {detector} detector watches every CPU"


def reported_when_locked(detector: str, locked: set[int], cpus: int,
                         console: str = "") -> tuple[set[int], str]:
    """Which of the `locked` CPUs (locked at once) the detector reports."""
    runs, why = detector_runs(detector, console)
    if not runs:
        return set(), why
    if detector == "buddy":
        # CPU c checks the next online CPU: x is watched by the one before it.
        seen = {x for x in locked if (x - 1) % cpus not in locked} if cpus > 1 else set()
        return seen, ("the buddy detector runs on the CPUs it watches: a locked CPU "
                      "is reported only if the CPU before it is free")
    return set(locked), f"the {detector} detector checks every CPU from its NMI"


def hard_lockup_bound_s(detector: str, thresh: int) -> float:
    """Latest acceptable report after the injection, in seconds.

    buddy: a CPU checks its neighbour every third hrtimer tick (period
    2*thresh/5), and needs two checks without progress: at most about
    3*thresh, plus a thresh of slack for TCG scheduling.
    hpet: one NMI every thresh seconds, and a lockup is declared at the first
    NMI that finds no hrtimer progress since the previous one: 2*thresh.
    perf: the same rule on a PMU cycle counter's NMI, whose period in time
    follows the CPU's frequency: a second of slack (not measured here, where
    TCG has no PMU; KVM runners with a vPMU measure it).
    """
    if detector == "buddy":
        return 4.0 * thresh + 2.0
    if detector == "perf":
        return 2.0 * thresh + 1.0
    return 2.0 * thresh


def soft_lockup_bound_s(thresh: int) -> float:
    """The soft lockup threshold is 2*thresh, sampled every 2*thresh/5."""
    return 2.0 * thresh + 2.0 * thresh / 5 + thresh + 2.0
