"""Verdicts of the lockup scenarios (harness/scenarios.py: boot, idle, soak,
hard and soft lockups from lockup_inject, test_lockup and LKDTM), as pure
functions of what a scenario recorded: an observation (the console lines
it started and ended at, the injection's kernel time, what the guest
answered) and the console's events in that window, for a machine and a
detector. No guest and no I/O here, so a captured case is a regression
test (tests/test_lockup_verdicts.py, tests/logs/lockup/).
"""
import dataclasses
import types
import typing
from dataclasses import dataclass, field

from harness import expectations
from harness.console_events import Event, EventKind, describe
from harness.detectors import Detector
from harness.verdicts import Verdict

BAD_KINDS = ("oops", "bug", "gpf", "warning", "unknown_nmi", "dmar_fault", "panic",
             "lockdep", "invalid_context", "kasan", "kcsan")
LOCKUP_KINDS = ("hard_lockup", "soft_lockup", "rcu_stall", "hung_task",
                "workqueue_lockup", "spinlock_lockup")
IRQ_REMAP_ON = "DMAR-IR: Enabled IRQ remapping"
# The hung task timeout the LKDTM hung task case sets.
HUNG_TASK_TIMEOUT_S = 4


class Observation:
    """A scenario's record: JSON in its measurements ("observation"), read
    back by from_dict (tests/logs/*/record.json)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name: f for f in dataclasses.fields(cls)}
        return cls(**{k: _revive(names[k].type, v) for k, v in d.items() if k in names})


def _revive(kind, value):
    """JSON turned int keys into strings and nested records into dicts."""
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    for k in options:
        if isinstance(k, type) and issubclass(k, Observation) and isinstance(value, dict):
            return k.from_dict(value)
        if typing.get_origin(k) is dict and typing.get_args(k)[:1] == (int,) \
                and isinstance(value, dict):
            return {int(a): b for a, b in value.items()}
        if typing.get_origin(k) is list and isinstance(value, list):
            item = typing.get_args(k)[0]
            if isinstance(item, type) and issubclass(item, Observation):
                return [item.from_dict(v) for v in value]
    return value


def window(events: list[Event], start: int, end: int) -> list[Event]:
    """The events after console line `start`, up to line `end`."""
    return [e for e in events if start < e.line <= end]


def of_kinds(events: list[Event], kinds) -> list[Event]:
    return [e for e in events if e.kind in kinds]


def hold_ms(bound_s: float, thresh: int) -> int:
    """How long a lockup is held: it outlasts the latest report."""
    return int((bound_s + thresh + 2) * 1000)


def bound_s(kind: str, detector: Detector, thresh: int) -> float:
    """The latest acceptable report of `kind` after the injection."""
    if kind == EventKind.HARD_LOCKUP:
        return expectations.hard_lockup_bound_s(detector.name, thresh)
    if kind == EventKind.SOFT_LOCKUP:
        return expectations.soft_lockup_bound_s(thresh)
    return 2.0 * HUNG_TASK_TIMEOUT_S + 2


def visible(kind: str, detector: Detector, spec, off_message: str) -> tuple[bool, str]:
    """Must a lockup whose report is `kind` be reported on `spec`? A hard
    lockup only if the detector runs and can see it (expectations);
    off_message: the detector's off line, if the boot console printed it."""
    if kind == EventKind.HARD_LOCKUP:
        return expectations.hard_lockup_visible(detector.name, spec.cpus, off_message, spec)
    return True, ""


def said_off(detector: Detector, console: str) -> str:
    """The detector's boot-time off line if `console` has it, else ''."""
    off = detector.off_message
    return off if off and off in console else ""


@dataclass(frozen=True)
class Lockup(Observation):
    """A lockup made and watched: console lines (start, end], the report
    kind waited for on CPU `expect` (None: any CPU, a hung task), when the
    injection marker said it began (kernel time), the watchdog_thresh it
    ran with."""
    start: int
    end: int
    kind: str
    cpu: int
    expect: int | None
    injected_at: float | None
    thresh: int
    off_message: str = ""
    # The report reached the console only after the lockup ended.
    console_delayed: bool = False
    # The guest at the end (hardlockup_panic=1: it must go down).
    alive: bool = True


def repeated_reports(reports: list[Event]) -> dict:
    """CPUs with more than one hard lockup report, and how many, among the
    reports of one lockup: kernel/watchdog.c prints a CPU's hard lockup
    once, and again only after it made progress."""
    counts: dict = {}
    for e in reports:
        counts[e.cpu] = counts.get(e.cpu, 0) + 1
    return {c: n for c, n in counts.items() if n > 1}


def lockup(obs: Lockup, events: list[Event], spec, detector: Detector) -> Verdict:
    """Exactly the locked CPU reported (`expect`), once, within the bound,
    nothing bad besides; or nothing reported where the detector cannot see
    it. With hardlockup_panic=1, a hard lockup panics the machine."""
    bound = bound_s(obs.kind, detector, obs.thresh)
    seen, why = visible(obs.kind, detector, spec, obs.off_message)
    events = window(events, obs.start, obs.end)
    reports = [e for e in events if e.kind == obs.kind]
    m: dict = {"bound_s": bound, "injected_at": obs.injected_at}
    report = next((e for e in reports if obs.expect is None or e.cpu == obs.expect),
                  None) if seen else None
    if report is not None:
        m["latency_s"] = round(report.time - obs.injected_at, 3)
        if obs.console_delayed:
            m["console_delayed"] = True
    if spec.hardlockup_panic and obs.kind == EventKind.HARD_LOCKUP:
        return _panic(obs, events, seen, why, m)
    cpu = obs.expect
    others = sorted({e.cpu for e in reports if e.cpu != cpu}, key=str)
    if obs.kind == EventKind.SOFT_LOCKUP and others:
        # CPUs that wait on a soft-locked CPU (IPIs, stop_machine) are stuck
        # as long as it is and may even be reported first: recorded, not
        # held against the detector. A hard lockup elsewhere always is.
        m["knock_on_cpus"] = others
        others = []
    bad = of_kinds(events, BAD_KINDS)
    if bad:
        return Verdict(False, "unexpected: " + describe(bad), m)
    if not seen:
        if reports:
            return Verdict(False, f"reported although {why}: " + describe(reports), m)
        return Verdict(True, f"not reported, as expected: {why}", m)
    if report is None:
        also = f"; reported instead: cpus {others}" if others else ""
        where = f" on cpu {cpu}" if cpu is not None else ""
        return Verdict(False, f"expected a {obs.kind} report{where} within {bound:.1f} s, "
                       f"got none{also}", m)
    if others:
        return Verdict(False, f"{obs.kind} also reported on cpus {others}, only cpu {cpu} "
                       "was locked", m)
    again = repeated_reports(reports) if obs.kind == EventKind.HARD_LOCKUP else {}
    if again:
        m["reports_per_cpu"] = again
        return Verdict(False, f"one lockup reported {again[cpu]} times on cpu {cpu}: a hard "
                       "lockup is reported once until it ends", m)
    latency = m["latency_s"]
    if not 0 <= latency <= bound:
        return Verdict(False, f"reported {latency:.2f} s after the injection, outside "
                       f"0..{bound:.1f} s", m)
    who = f"cpu {cpu}" if cpu is not None else "the hung task"
    return Verdict(True, f"{who} reported after {latency:.2f} s", m)


def _panic(obs: Lockup, events: list[Event], seen: bool, why: str, m: dict) -> Verdict:
    panic = next((e for e in events if e.kind == EventKind.PANIC), None)
    if not seen:
        if panic is not None or not obs.alive:
            return Verdict(False, f"guest panicked although {why}", m)
        return Verdict(True, f"no panic, as expected: {why}", m)
    if panic is None:
        return Verdict(False, "hardlockup_panic=1 but no panic", m)
    m["panic_latency_s"] = round(panic.time - obs.injected_at, 3)
    if "Hard LOCKUP" not in panic.text:
        return Verdict(False, f"panicked for another reason: {panic.title}", m)
    if obs.alive:
        return Verdict(False, "panicked but the guest never went down", m)
    return Verdict(True, "Kernel panic - not syncing: Hard LOCKUP", m)


@dataclass(frozen=True)
class Boot(Observation):
    """What a booted guest answered: its console is lines (0, end]."""
    end: int
    nmi_watchdog: str
    online: str


def boot(obs: Boot, events: list[Event], console: str, spec, detector: Detector) -> Verdict:
    """A clean boot: nothing bad on the console, every CPU online,
    interrupt remapping as the machine has it, and nmi_watchdog 1 exactly
    when the detector can run here."""
    m: dict = {"nmi_watchdog": obs.nmi_watchdog}
    booted = [e for e in window(events, 0, obs.end) if e.kind == EventKind.BOOT_COMPLETE]
    if booted and booted[-1].time is not None:
        m["kernel_boot_seconds"] = booted[-1].time
    bad = of_kinds(window(events, 0, obs.end), BAD_KINDS)
    if bad:
        return Verdict(False, "bad console events: " + describe(bad), m)
    want_online = "0" if spec.cpus == 1 else f"0-{spec.cpus - 1}"
    if obs.online != want_online:
        return Verdict(False, f"CPUs online {obs.online!r}, want {want_online!r}", m)
    remapping = IRQ_REMAP_ON in console
    if remapping != spec.iommu:
        return Verdict(False, "interrupt remapping is "
                       f"{'on' if remapping else 'off'} but the IOMMU is "
                       f"{'on' if spec.iommu else 'off'}", m)
    runs, why = expectations.detector_runs(detector.name, console, spec)
    if obs.nmi_watchdog != ("1" if runs else "0"):
        return Verdict(False, f"/proc/sys/kernel/nmi_watchdog reads {obs.nmi_watchdog!r}, "
                       f"want '{1 if runs else 0}'{' (' + why + ')' if why else ''}", m)
    if not runs:
        return Verdict(True, f"clean boot, {detector.name} detector off: {why}", m)
    return Verdict(True, f"clean boot, {detector.name} detector on", m)


@dataclass(frozen=True)
class Idle(Observation):
    start: int
    end: int
    window_s: float


def idle(obs: Idle, events: list[Event]) -> Verdict:
    """Nothing fires in an idle window."""
    bad = of_kinds(window(events, obs.start, obs.end), LOCKUP_KINDS + BAD_KINDS)
    m = {"window_seconds": obs.window_s}
    if bad:
        return Verdict(False, "false positive while idle: " + describe(bad), m)
    return Verdict(True, f"nothing reported in {obs.window_s:g} s idle", m)


def nmi_rate_problem(rates: list[float], thresh: int) -> str | None:
    """What is wrong with per-CPU HPET watchdog NMI rates, if anything: every
    CPU takes one NMI per sample (expiry or broadcast), watchdog_thresh/5
    apart; TCG delivers some late, and other NMI users add a few."""
    want = expectations.hpet_nmi_rate(thresh)
    low, high = 0.6 * want, 1.5 * want
    off = [cpu for cpu, r in enumerate(rates) if not low <= r <= high]
    if off:
        return f"NMI rate on cpus {off} outside {low:.2f}..{high:.2f}/s: {rates}"
    return None


def rates(before: list[int], after: list[int], seconds: float) -> list[float]:
    """NMIs per CPU per second between two /proc/interrupts samples."""
    return [round((a - b) / seconds, 3) for a, b in zip(after, before)]


def count_kinds(events: list[Event]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in events:
        counts[e.kind] = counts.get(e.kind, 0) + 1
    return counts


@dataclass(frozen=True)
class Soak(Observation):
    """An idle window (start, end] of `seconds`, NMI counts per CPU at its
    ends `elapsed_s` apart, and the canary lockup after it."""
    start: int
    end: int
    seconds: float
    nmis_before: list[int]
    nmis_after: list[int]
    elapsed_s: float
    off_message: str = ""
    # Reports printed before the window (a starved boot), per kind.
    before_soak: dict = field(default_factory=dict)
    canary: Lockup | None = None


def soak(obs: Soak, events: list[Event], spec, detector: Detector) -> Verdict:
    """No false positive in the window, the detector's NMIs kept coming on
    every CPU (soak_window), and the canary lockup after it is reported."""
    v = soak_window(obs, events, spec, detector)
    if not v.passed:
        return v
    m = v.measurements
    if obs.canary is None:
        return Verdict(False, "no canary lockup after the soak", m)
    canary = lockup(obs.canary, events, spec, detector)
    m["canary"] = {"passed": canary.passed, "reason": canary.reason,
                   "latency_s": canary.measurements.get("latency_s")}
    if not canary.passed:
        return Verdict(False, "no false positive, but a hard lockup after the soak was "
                       f"judged wrong: {canary.reason}", m)
    return Verdict(True, f"{v.reason}; then {canary.reason}", m)


def soak_window(obs: Soak, events: list[Event], spec, detector: Detector) -> Verdict:
    """The soak's window alone: no false positive, and the detector's NMIs
    kept coming on every CPU."""
    during = window(events, obs.start, obs.end)
    bad = of_kinds(during, LOCKUP_KINDS + BAD_KINDS)
    per_s = rates(obs.nmis_before, obs.nmis_after, obs.elapsed_s)
    m: dict = {"soak_seconds": obs.seconds, "false_positives": len(bad),
               "by_kind": count_kinds(bad), "before_soak": obs.before_soak,
               "nmi_per_cpu_per_s": per_s,
               # Kept for the record, not false positives (see console_events).
               "nmi_slow": [e.title for e in during if e.kind == EventKind.NMI_SLOW]}
    if bad:
        return Verdict(False, f"{len(bad)} false positives in {obs.seconds:.0f} s: "
                       + describe(bad), m)
    runs, _ = expectations.detector_runs(detector.name, obs.off_message, spec)
    problem = nmi_rate_problem(per_s, spec.watchdog_thresh) \
        if runs and detector.nmis_per_thresh else None
    if problem:
        return Verdict(False, f"the detector did not stay armed: {problem}", m)
    return Verdict(True, f"no false positive in {obs.seconds:.0f} s idle", m)
