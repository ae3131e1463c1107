"""What each detector needs from the machine and can or cannot see, stated once.

Scenario verdicts ask here instead of special-casing detectors inline, so a
limitation (the buddy detector has no buddy on one CPU) is asserted as an
expectation rather than skipped. The numbers are in the Detector table
(harness/detectors.py).
"""
from dataclasses import dataclass

from harness.detectors import PERF, get

# kernel/watchdog_perf.c when the CPU has no PMU (TCG): the perf detector
# never runs, and the kernel says so once at boot.
PERF_OFF = PERF.off_message


def detector_runs(detector: str, console: str, spec=None) -> tuple[bool, str]:
    """Can the detector run on this machine at all? From its boot console
    and, for the HPET detector, what the machine's interrupt path allows
    (PATHS; without a spec, a machine whose path is the usual one)."""
    off = get(detector).off_message
    if off and off in console:
        return False, f"no PMU here (TCG): the kernel said '{off}'"
    if get(detector).hpet_channel and spec is not None:
        path = hpet_path(spec)
        if path.outcome != "enabled":
            return False, f"{path.outcome}: {path.why}"
    return True, ""


# --- the HPET detector's interrupt path, per APIC x IOMMU x comparator ------

# What the kernel prints (kernel/watchdog_hld_hpet.c of the series; Linux's
# DMAR-IR lines), as regular expressions.
DECLINE_X2APIC = ("hpet_hld: not used: interrupt remapping in x2APIC mode with "
                  "the HPET not behind the IOMMU")
NO_NMI = r"hpet_hld: disabled: no NMI from channel (?P<channel>\d+)"
COMPAT_BLOCKED = (r"DMAR: \[INTR-REMAP\] Request device \[ff:0f\.0\] fault index \S+ "
                  r"\[fault reason 0x25\] Blocked a compatibility format interrupt request")
HPET_IN_DMAR = "DMAR-IR: HPET id 0 under DRHD base"


@dataclass(frozen=True)
class HpetPath:
    """What the HPET detector does on a machine, and how a guest shows it.

    outcome: enabled (NMIs arrive, lockups reported), declines (at probe,
    `says`), disabled (enabled, its NMIs never arrive, it notices and says
    so: `says`, within disable_bound_s). chip: the irq chip of the
    detector's channel (/sys/kernel/irq/N/chip_name; the NMI has no action,
    so /proc/interrupts does not list it). remap: Linux's interrupt
    remapping mode ("x2apic" / "xapic"), or None without the IOMMU."""
    outcome: str
    chip: str | None
    remap: str | None
    says: str | None
    why: str
    fault_25h: bool = False

    def disable_bound_s(self, thresh: int) -> float:
        """From 'enabled' to 'disabled: no NMI': the process-context watch
        ticks every watchdog_thresh, not aligned with the enabling, so it
        finds the channel silent for a period 1-2 periods after it; it
        restarts the channel twice, a period apart, then gives up: at most
        4 x watchdog_thresh, plus a second for TCG. Measured (thresh 2):
        5.5-5.8 s, once 7.5 s (the first check 3.3 s after enabling)."""
        return 4.0 * thresh + 1.0


def hpet_path(spec) -> HpetPath:
    """The expected path of the HPET detector on `spec` (a MachineSpec),
    the same for either comparator rule (a past comparator only matters
    once the detector is late: the nmi-stall scenario). Measured with the
    patched QEMU 10.0.2 under TCG, 2 and 4 vCPUs (README)."""
    return PATHS[(spec.apic, spec.iommu_mode, spec.comparator)]


def _paths() -> dict:
    base = {
        ("xapic", "off"): HpetPath(
            "enabled", "HPET-MSI", None, None,
            "no remapping: the channel's MSI goes to the local APIC as it is"),
        ("xapic", "described"): HpetPath(
            "enabled", "IR-HPET-MSI", "xapic", None,
            "remapping in xAPIC mode, the HPET in the DMAR: an IRTE with NMI delivery"),
        ("xapic", "undescribed"): HpetPath(
            "disabled", "HPET-MSI", "xapic", NO_NMI,
            "remapping in xAPIC mode, the HPET not in the DMAR: its compatibility-format "
            "MSI is blocked (GCMD.CFI clear, fault 25h); the detector restarts the "
            "channel, then disables itself; no perf fallback under TCG (no PMU)",
            fault_25h=True),
        ("x2apic", "off"): HpetPath(
            "enabled", "HPET-MSI", None, None,
            "no remapping, so Linux keeps xAPIC mode ('IRQ remapping doesn't "
            "support X2APIC mode'): as xapic/off"),
        ("x2apic", "described"): HpetPath(
            "enabled", "IR-HPET-MSI", "x2apic", None,
            "remapping in x2APIC mode, the HPET in the DMAR: an IRTE with NMI delivery"),
        ("x2apic", "undescribed"): HpetPath(
            "declines", None, "x2apic", DECLINE_X2APIC,
            "remapping in x2APIC mode, the HPET not in the DMAR: no MSI domain for it, "
            "the detector declines at probe; the perf fallback has no PMU under TCG "
            f"('{PERF_OFF}')"),
    }
    return {(apic, iommu, cmp): path for (apic, iommu), path in base.items()
            for cmp in ("qemu", "hardware")}


PATHS = _paths()


def paths_table() -> str:
    """PATHS as the markdown table in README.md (tests/test_matrix.py checks
    that the README has exactly this)."""
    import re
    rows = ["| apic | iommu | comparator | HPET detector | hard lockups | channel irq chip "
            "| remapping | the kernel says | why |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (apic, iommu, cmp), p in PATHS.items():
        says = re.sub(r"\(\?P<\w+>[^)]*\)", "N", p.says or "")
        says = f"`{says}`" if says else ""
        if p.fault_25h:
            says = "fault 25h from ff:0f.0, then " + says
        lockups = "reported" if p.outcome == "enabled" else "not reported"
        rows.append(f"| {apic} | {iommu} | {cmp} | {p.outcome} | {lockups} | "
                    f"{p.chip or '-'} | {p.remap or 'off'} | {says} | {p.why} |")
    return "\n".join(rows)


def machine_defaults(detector: str) -> dict:
    """MachineSpec fields a detector needs: the HPET one wants FSB (MSI)
    capable channels beyond the 3 QEMU gives by default, and to be asked for;
    perf: the HPET kernel left to its default, the perf detector."""
    return dict(get(detector).machine)


def hard_lockup_visible(detector: str, cpus: int, console: str = "",
                        spec=None) -> tuple[bool, str]:
    runs, why = detector_runs(detector, console, spec)
    if not runs:
        return False, why
    if get(detector).neighbour and cpus < 2:
        return False, ("the buddy detector checks each CPU from its neighbour; "
                       "with one CPU there is none, so a hard lockup goes unreported")
    return True, f"the {detector} detector watches every CPU"


def reported_when_locked(detector: str, locked: set[int], cpus: int,
                         console: str = "", spec=None) -> tuple[set[int], str]:
    """Which of the `locked` CPUs (locked at once) the detector reports."""
    runs, why = detector_runs(detector, console, spec)
    if not runs:
        return set(), why
    if get(detector).neighbour:
        # CPU c checks the next online CPU: x is watched by the one before it.
        seen = {x for x in locked if (x - 1) % cpus not in locked} if cpus > 1 else set()
        return seen, ("the buddy detector runs on the CPUs it watches: a locked CPU "
                      "is reported only if the CPU before it is free")
    return set(locked), f"the {detector} detector checks every CPU from its NMI"


def hard_lockup_bound_s(detector: str, thresh: int) -> float:
    """Latest acceptable report after the injection, in seconds (each
    detector's reasoning is at its entry in harness/detectors.py)."""
    per_thresh, slack = get(detector).bound
    return per_thresh * thresh + slack


def soft_lockup_bound_s(thresh: int) -> float:
    """The soft lockup threshold is 2*thresh, sampled every 2*thresh/5."""
    return 2.0 * thresh + 2.0 * thresh / 5 + thresh + 2.0


def report_floor(detector: str) -> float:
    """The shortest interrupts-off section, in watchdog_thresh, that the
    detector may report as a hard lockup.

    Documentation/admin-guide/lockup-watchdogs.rst: a hard lockup is more
    than watchdog_thresh without letting interrupts run. A detector reports
    a CPU that handled no softlockup hrtimer interrupt (period 2/5 thresh)
    between two checks, so interrupts off for (check interval - 2/5 thresh)
    can be reported at the worst phase.
    hpet: reports only after 7/5 thresh without a sign of life: 1.
    buddy: checks its neighbour every third hrtimer tick (6/5 thresh): 4/5.
    perf: checks at least 4/5 thresh apart (watchdog_check_timestamp): 2/5.
    """
    return get(detector).floor_x_thresh


def hpet_nmi_rate(thresh: int) -> float:
    """Watchdog NMIs per CPU and second of the HPET detector: one expiry,
    then one broadcast, every watchdog_thresh/5."""
    return nmi_rate("hpet", thresh)


def nmi_rate(detector: str, thresh: int) -> float:
    """The detector's own watchdog NMIs per CPU and second (0: it sends none)."""
    per_thresh = get(detector).nmis_per_thresh
    return per_thresh / max(thresh, 1) if per_thresh else 0.0


def claim_tolerance(detector: str) -> float:
    """The fraction of time in which the detector may take an NMI that is
    not its own on the CPU where its timer NMI arrives: the HPET detector
    claims its expiry from 1/128 of a period before the prediction, and an
    NMI there cancels the expiry. Other detectors claim no NMI by time."""
    return get(detector).claim_tolerance
