"""Verdicts of the detector scenarios (harness/detector_scenarios.py: is it
on at its NMI rate, several CPUs locked at once, watchdog_cpumask,
declining, its interrupt path, other NMI users), as pure functions of what
a scenario recorded (an observation) and the console in its window. No
guest and no I/O here (tests/test_lockup_verdicts.py, tests/logs/detector/).
"""
import re
from dataclasses import dataclass, field

from harness import detectors, expectations
from harness.console_events import Event, EventKind, describe
from harness.detectors import HPET, Detector
from harness.lockup_verdicts import (BAD_KINDS, LOCKUP_KINDS, Lockup, Observation,
                                     bound_s, lockup, nmi_rate_problem, of_kinds, rates,
                                     repeated_reports, window)
from harness.verdicts import ENABLED_ON, Verdict


def cpulist(text: str) -> set[int]:
    """A kernel cpulist ("0-2,5") as a set."""
    cpus: set[int] = set()
    for part in filter(None, text.strip().split(",")):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


@dataclass(frozen=True)
class Enabled(Observation):
    """The detector as the guest showed it: nmi_watchdog, its debugfs, and
    NMI counts per CPU at the ends of an idle window (start, end]."""
    start: int
    end: int
    off_message: str = ""
    nmi_watchdog: str | None = None
    enabled_said: bool = False       # the boot console's "hpet_hld: enabled"
    monitored: list[int] | None = None
    channel: int | None = None
    handling_cpu: int | None = None
    nmis_before: list[int] = field(default_factory=list)
    nmis_after: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0
    tsc_error_ns: dict = field(default_factory=dict)


def enabled(obs: Enabled, events: list[Event], spec, detector: Detector) -> Verdict:
    """The detector is on where it can run, and every monitored CPU takes
    its NMIs at one rate."""
    runs, why = expectations.detector_runs(detector.name, obs.off_message, spec)
    m: dict = {}
    if not runs:
        return Verdict(True, f"{detector.name} detector off, as expected: {why}", m)
    if obs.nmi_watchdog != "1":
        return Verdict(False, "nmi_watchdog does not read 1", m)
    if not detector.debugfs:
        return Verdict(True, f"{detector.name} detector on", m)
    if not obs.enabled_said:
        return Verdict(False, "no 'hpet_hld: enabled' line", m)
    m["channel"], m["handling_cpu"] = obs.channel, obs.handling_cpu
    if set(obs.monitored or ()) != set(range(spec.cpus)):
        return Verdict(False, f"monitoring {sorted(obs.monitored or ())}, not all CPUs", m)
    per_s = rates(obs.nmis_before, obs.nmis_after, obs.elapsed_s)
    m["nmi_per_cpu_per_s"] = per_s
    m["tsc_error_ns"] = obs.tsc_error_ns
    bad = of_kinds(window(events, obs.start, obs.end), BAD_KINDS + LOCKUP_KINDS)
    if bad:
        return Verdict(False, "while idle: " + describe(bad), m)
    if not per_s:
        return Verdict(False, "no NMI counts", m)
    problem = nmi_rate_problem(per_s, spec.watchdog_thresh)
    if problem:
        return Verdict(False, problem, m)
    if max(per_s) - min(per_s) > 0.25 * max(per_s):
        return Verdict(False, f"CPUs take NMIs at unequal rates: {per_s}", m)
    return Verdict(True, f"channel {obs.channel}, handling cpu {obs.handling_cpu}, "
                   f"{min(per_s):.2f}-{max(per_s):.2f} NMI/s per CPU", m)


@dataclass(frozen=True)
class ManyLocked(Observation):
    """CPUs locked at once in (start, end], each one's injection time."""
    start: int
    end: int
    cpus: list[int]
    injected_at: dict[int, float]
    thresh: int
    off_message: str = ""


def many_locked(obs: ManyLocked, events: list[Event], spec, detector: Detector) -> Verdict:
    """Each locked CPU the detector can see is reported, once, in time; no
    other; nothing bad."""
    expected, why = expectations.reported_when_locked(detector.name, set(obs.cpus),
                                                      spec.cpus, obs.off_message, spec)
    bound = bound_s(EventKind.HARD_LOCKUP, detector, obs.thresh)
    events = window(events, obs.start, obs.end)
    reports = [e for e in events if e.kind == EventKind.HARD_LOCKUP]
    reported = {e.cpu for e in reports}
    m: dict = {"cpus": obs.cpus, "reported": sorted(reported, key=str)}
    first: dict = {}
    for e in reports:
        first.setdefault(e.cpu, e.time - obs.injected_at[e.cpu]
                         if e.cpu in obs.injected_at else None)
    m["latency_s"] = {c: round(t, 3) for c, t in first.items() if t is not None}
    bad = of_kinds(events, BAD_KINDS)
    if bad:
        return Verdict(False, "unexpected: " + describe(bad), m)
    m["expected"] = sorted(expected)
    if reported != expected:
        return Verdict(False, f"reported cpus {sorted(reported, key=str)}, expected "
                       f"{sorted(expected)} ({why})", m)
    again = repeated_reports(reports)
    if again:
        m["reports_per_cpu"] = again
        return Verdict(False, f"one lockup reported several times: {again} (cpu: reports); "
                       "a hard lockup is reported once until it ends", m)
    late = {c: t for c, t in m["latency_s"].items() if not 0 <= t <= bound}
    if late:
        return Verdict(False, f"reports outside 0..{bound:.1f} s: {late}", m)
    return Verdict(True, f"{len(expected)} of {len(obs.cpus)} locked cpus reported, as "
                   f"expected: {why}", m)


def excluded(obs: Lockup, events: list[Event]) -> Verdict:
    """A CPU outside watchdog_cpumask, locked, is never reported; nothing
    bad happens besides."""
    events = window(events, obs.start, obs.end)
    m = {"injected_at": obs.injected_at}
    mine = [e for e in events if e.kind == EventKind.HARD_LOCKUP and e.cpu == obs.cpu]
    if mine:
        return Verdict(False, f"cpu {obs.cpu} is outside watchdog_cpumask but was "
                       "reported: " + describe(mine), m)
    if obs.injected_at is None:
        return Verdict(False, f"no injection time for cpu {obs.cpu}", m)
    # A CPU that waits on the locked one (a cross-CPU call, a TLB
    # shootdown) is stuck as long as it is: its soft lockup is recorded,
    # as lockup_verdicts.lockup does, not held against the detector. Any
    # other report is.
    knock_on = [e for e in events if e.kind == EventKind.SOFT_LOCKUP and e.cpu != obs.cpu]
    if knock_on:
        m["knock_on_cpus"] = sorted({e.cpu for e in knock_on}, key=str)
    bad = [e for e in of_kinds(events, BAD_KINDS + LOCKUP_KINDS) if e not in knock_on]
    if bad:
        return Verdict(False, "unexpected: " + describe(bad), m)
    return Verdict(True, f"cpu {obs.cpu} locked, outside the mask, not reported", m)


def quiet(obs: Lockup, events: list[Event]) -> Verdict:
    """A lockup while the detector is off (watchdog_thresh=0, nmi_watchdog=0):
    no hard lockup report."""
    got = [e for e in window(events, obs.start, obs.end) if e.kind == EventKind.HARD_LOCKUP]
    if got:
        return Verdict(False, f"{len(got)} reports while disabled: " + describe(got), {})
    return Verdict(True, "0 reports", {})


@dataclass(frozen=True)
class Step(Observation):
    """One lockup of a sequence (runtime-changes, handling-cpu-hotplug):
    it must be reported (a lockup verdict) or, the detector being off, not
    at all (quiet)."""
    label: str
    lockup: Lockup
    reported: bool = True


@dataclass(frozen=True)
class Steps(Observation):
    steps: list[Step]
    said: list[str] = field(default_factory=list)     # facts before the first step


def steps(obs: Steps, events: list[Event], spec, detector: Detector) -> Verdict:
    """Each step judged in turn, up to the first that fails; the reason
    tells every step's."""
    said, m = list(obs.said), {}
    for s in obs.steps:
        v = lockup(s.lockup, events, spec, detector) if s.reported else quiet(s.lockup, events)
        said.append(f"{s.label}: {v.reason}")
        m = v.measurements
        if not v.passed:
            return Verdict(False, "; ".join(said), m)
    return Verdict(bool(obs.steps), "; ".join(said) if obs.steps else "no step ran", m)


BACKTRACE = re.compile(r"NMI backtrace for cpu (\d+)")


@dataclass(frozen=True)
class Window(Observation):
    """Console lines (start, end] a scenario watched."""
    start: int
    end: int


def sysrq_backtrace(obs: Window, events: list[Event], console: str, spec) -> Verdict:
    """sysrq-l backtraces every CPU by NMI (`console`: the window's text),
    and no NMI goes astray."""
    got = {int(m.group(1)) for m in BACKTRACE.finditer(console)}
    bad = of_kinds(window(events, obs.start, obs.end), BAD_KINDS + LOCKUP_KINDS)
    m = {"backtraced": sorted(got)}
    if bad:
        return Verdict(False, "unexpected: " + describe(bad), m)
    if got != set(range(spec.cpus)):
        return Verdict(False, f"NMI backtraces from cpus {sorted(got)} only", m)
    return Verdict(True, "every CPU backtraced, no unknown NMI", m)


def expected_decline(spec) -> str | None:
    """The reason the HPET detector must give for not running on `spec`."""
    if spec.nmi_watchdog != HPET.machine["nmi_watchdog"]:
        return "nmi_watchdog=hpet not on the command line"
    if not spec.hpet:
        return "no HPET"
    if "tsc=unstable" in spec.cmdline_extra:
        return "TSC unstable"
    if not spec.hpet_msi:
        return "no FSB-capable free channel"
    path = expectations.hpet_path(spec)
    if path.outcome == "declines":
        return path.says.split("not used: ", 1)[1]
    return None


@dataclass(frozen=True)
class Declined(Observation):
    """What the boot console said about the detector, whether its channel
    is in debugfs, and an idle window (start, end] after."""
    start: int
    end: int
    said: list[str]
    enabled_said: bool
    channel_reserved: bool


def declines(obs: Declined, events: list[Event], spec) -> Verdict:
    """The HPET detector declines with the reason the machine gives,
    reserves no channel, and the guest idles clean."""
    why = expected_decline(spec)
    m = {"said": obs.said}
    if why is None:
        return Verdict(False, "nothing here makes the HPET detector decline", m)
    if obs.enabled_said:
        return Verdict(False, "enabled although " + why, m)
    if not any(why in s for s in obs.said):
        return Verdict(False, f"no 'hpet_hld: not used: {why}' line", m)
    if obs.channel_reserved:
        return Verdict(False, "a channel is reserved anyway", m)
    bad = of_kinds(window(events, obs.start, obs.end), BAD_KINDS + LOCKUP_KINDS)
    if bad:
        return Verdict(False, "while idle: " + describe(bad), m)
    return Verdict(True, f"declined: {why}; idle clean", m)


REMAP_ON = r"DMAR-IR: Enabled IRQ remapping in (\w+) mode"
TURNED_OFF = r"hpet_hld: (disabled|not used)\b.*"
# kernel/watchdog.c of the series: another detector took over, or none.
HANDOVER = r"detector stopped working, (?P<to>\w+) took over"
PERMANENTLY_OFF = "Hard watchdog permanently disabled"


def handed_to(events: list[Event]) -> tuple[Event | None, str | None]:
    """The first line among `events` saying another detector took over,
    and the detector it names."""
    e = next(iter(of_kinds(events, (EventKind.DETECTOR_HANDOVER,))), None)
    return e, re.search(HANDOVER, e.text).group("to") if e else None


def unexpected(events: list[Event]) -> list[Event]:
    """The reports and bad events among `events`, but the DMAR faults a
    blocked HPET MSI causes (fault 25h, and the status line before it)."""
    return [e for e in of_kinds(events, BAD_KINDS + LOCKUP_KINDS)
            if not (e.kind == EventKind.DMAR_FAULT
                    and ("0x25" in e.text or "fault status" in e.text))]


def kernel_time(text: str, offset: int) -> float | None:
    """The printk timestamp of the console line holding `offset`."""
    start = text.rfind("\n", 0, offset) + 1
    m = re.match(r"\[\s*(\d+\.\d+)\]", text[start:])
    return float(m.group(1)) if m else None


@dataclass(frozen=True)
class IrqPath(Observation):
    """The console from boot to line `end`, what the guest answered, and
    the line after which it watched for trouble (`watch_from`)."""
    end: int
    watch_from: int
    chips: list[str] | None = None
    nmis: list[int] | None = None      # the channel's NMI count before and after the watch
    restarts: int | None = None
    nmi_watchdog: str | None = None
    debugfs: bool | None = None        # the detector's debugfs exists


def irq_path(obs: IrqPath, events: list[Event], console: str, spec) -> Verdict:
    """The HPET detector took the path expectations.PATHS gives for `spec`
    (APIC mode x IOMMU x comparator rule): Linux's remapping mode, the HPET
    in the DMAR or not, the channel's irq chip, its debugfs, and for a
    blocked channel the fault, the restarts and the message within its
    bound, with nothing reported. `console`: lines 1..end."""
    path = expectations.hpet_path(spec)
    m: dict = {"expected": path.outcome, "expected_chip": path.chip}
    remap = re.search(REMAP_ON, console)
    m["remap"] = remap.group(1) if remap else None
    if m["remap"] != path.remap:
        return Verdict(False, f"interrupt remapping {m['remap'] or 'off'}, expected "
                       f"{path.remap or 'off'}", m)
    described = expectations.HPET_IN_DMAR in console
    if described != (spec.iommu_mode == "described"):
        return Verdict(False, f"'{expectations.HPET_IN_DMAR}' "
                       f"{'printed' if described else 'missing'} with iommu={spec.iommu_mode}",
                       m)
    if path.outcome == "declines":
        if not re.search(re.escape(path.says), console):
            return Verdict(False, f"no '{path.says}'", m)
        if re.search(ENABLED_ON, console):
            return Verdict(False, "enabled although it declined", m)
        if obs.debugfs:
            return Verdict(False, f"{HPET.debugfs} exists: a channel is taken", m)
        m["nmi_watchdog"] = obs.nmi_watchdog
        fallback = re.search(r"NMI watchdog: .*", console)
        m["fallback"] = fallback.group(0).strip() if fallback else None
        return Verdict(True, f"declined at probe: '{path.says}'; "
                       f"fallback: {m['fallback'] or 'none printed'}", m)
    on = re.search(ENABLED_ON, console)
    if not on:
        return Verdict(False, "no 'hpet_hld: enabled on channel' line", m)
    channel = int(on.group(1))
    m["channel"], m["chips"] = channel, obs.chips
    if obs.chips != [path.chip]:
        return Verdict(False, f"channel {channel}'s irq chip {obs.chips}, expected "
                       f"{path.chip}", m)
    thresh = max(spec.watchdog_thresh, 1)
    bad = of_kinds(window(events, obs.watch_from, obs.end), BAD_KINDS + LOCKUP_KINDS)
    if path.outcome == "enabled":
        m["nmis"], m["restarts"] = obs.nmis, obs.restarts
        off = re.search(TURNED_OFF, console)
        if bad:
            return Verdict(False, "unexpected: " + describe(bad), m)
        if off:
            return Verdict(False, f"then: {off.group(0)}", m)
        if not obs.nmis or obs.nmis[1] <= obs.nmis[0]:
            return Verdict(False, f"no NMI from channel {channel} through {path.chip} in "
                           f"{2 * thresh} s (nmis {obs.nmis})", m)
        if obs.restarts:
            return Verdict(False, f"channel restarted {obs.restarts} times", m)
        return Verdict(True, f"enabled on channel {channel} through {path.chip}, "
                       f"{obs.nmis[1] - obs.nmis[0]} NMIs in {2 * thresh} s", m)
    # disabled: the channel's interrupt never arrives.
    bound = path.disable_bound_s(spec.watchdog_thresh)
    gone = re.compile(path.says, re.M).search(console, on.start())
    if not gone:
        return Verdict(False, f"no '{path.says}' within {bound + 10:.0f} s of enabling", m)
    t_on, t_off = kernel_time(console, on.start()), kernel_time(console, gone.start())
    m["disabled_after_s"] = round(t_off - t_on, 3) if None not in (t_on, t_off) else None
    if int(gone.group("channel")) != channel:
        return Verdict(False, f"disabled channel {gone.group('channel')}, enabled {channel}",
                       m)
    if m["disabled_after_s"] is None or not 0 < m["disabled_after_s"] <= bound:
        return Verdict(False, f"disabled {m['disabled_after_s']} s after enabling, bound "
                       f"{bound:.1f} s", m)
    faults = re.findall(expectations.COMPAT_BLOCKED, console)
    m["faults_25h"] = len(faults)
    if path.fault_25h and not faults:
        return Verdict(False, "no fault 25h (compatibility format blocked) from ff:0f.0 "
                       "recorded", m)
    m["nmis"], m["restarts"] = obs.nmis[-1] if obs.nmis else None, obs.restarts
    if m["nmis"] or not obs.restarts:
        return Verdict(False, f"debugfs: {m['nmis']} NMIs, {obs.restarts} restarts "
                       "(expected none, and at least one)", m)
    # Given up (watchdog_hardlockup_lost()): the fallback took over (buddy
    # on the buddy-fallback flavour, perf with a PMU), or nmi_watchdog says
    # there is none.
    m["nmi_watchdog"] = obs.nmi_watchdog
    _, took = handed_to(window(events, 0, obs.end))
    if took:
        m["took_over"] = took
    if detectors.fallback(spec.flavour) == "buddy" and took != "buddy":
        return Verdict(False, f"the detector gave up and {took or 'nothing'} took over, "
                       "expected buddy", m)
    want = "1" if took else "0"
    if obs.nmi_watchdog != want:
        return Verdict(False, f"the detector gave up ({took or 'no'} fallback) "
                       f"but /proc/sys/kernel/nmi_watchdog reads {obs.nmi_watchdog!r}, "
                       f"not '{want}'", m)
    # Nothing hangs, nothing is reported: no lockup or other bad event (the
    # expected faults aside) since boot.
    bad = unexpected(window(events, 0, obs.end))
    if bad:
        return Verdict(False, "unexpected: " + describe(bad), m)
    return Verdict(True, f"channel {channel} on {path.chip}: its MSI blocked "
                   f"({len(faults)} faults 25h), {obs.restarts} restarts, then "
                   f"'{gone.group(0)}' after {m['disabled_after_s']} s "
                   f"(bound {bound:.0f} s); nothing reported", m)


@dataclass(frozen=True)
class Lost(Observation):
    """The HPET detector stopped working after it was enabled: console
    lines (start, end], `cause` what made it stop (the TSC marked
    unstable, or its MSI blocked since boot: start 0). `fallback` the
    detector its kernel falls back to (detectors.Flavour.fallback: buddy,
    or perf where a PMU is). Then /proc/sys/kernel/nmi_watchdog
    (`nmi_watchdog`), whether writing 0 then 1 to it worked
    (`rewritable`), and a hard lockup made after (`then_lockup`, judged
    with the rules of the detector that took over, or of perf without a
    PMU: nothing reported)."""
    start: int
    end: int
    cause: str
    fallback: str
    nmi_watchdog: str
    rewritable: bool
    then_lockup: Lockup | None = None


def lost(obs: Lost, events: list[Event], spec, known: dict) -> Verdict:
    """The kernel says the HPET detector is disabled and why, then that the
    fallback took over (buddy always; perf if it has a PMU) or that the
    hard watchdog is permanently disabled (perf without one), within
    2 x watchdog_thresh + 2 s; nmi_watchdog and its writability say the
    same; nothing is reported or goes wrong meanwhile; and the lockup
    after is reported as the fallback reports one, or not at all.
    `known`: name -> Detector, for the fallback's rules."""
    m: dict = {"cause": obs.cause, "fallback": obs.fallback,
               "nmi_watchdog": obs.nmi_watchdog, "rewritable": obs.rewritable}
    before = window(events, obs.start, obs.then_lockup.start if obs.then_lockup else obs.end)
    thresh = spec.watchdog_thresh
    disabled = of_kinds(before, (EventKind.DETECTOR_DISABLED,))
    off = next((e for e in disabled if "hpet_hld: disabled" in e.text), None)
    if off is None:
        return Verdict(False, f"{obs.cause}: no 'hpet_hld: disabled' line", m)
    m["said"] = off.title
    handover, taker = handed_to(before)
    gone = next((e for e in disabled if PERMANENTLY_OFF in e.text), None)
    end = handover or gone
    if end is None:
        return Verdict(False, f"{obs.cause}; '{off.title}', then neither a detector took "
                       "over nor the hard watchdog said it is off", m)
    if off.time is not None and end.time is not None:
        m["after_disabled_s"] = round(end.time - off.time, 3)
        if m["after_disabled_s"] > 2 * thresh + 2:
            return Verdict(False, f"'{end.title}' {m['after_disabled_s']} s after "
                           f"'{off.title}', bound {2 * thresh + 2} s", m)
    m["took_over"] = taker
    perf_off = any(known["perf"].off_message in e.text for e in disabled)
    want = obs.fallback if obs.fallback != "perf" or not perf_off else None
    if taker != want:
        return Verdict(False, f"{obs.cause}; {taker or 'no detector'} took over, expected "
                       f"{want or 'none (perf has no PMU here)'}", m)
    if handover and gone:
        return Verdict(False, f"both '{handover.title}' and '{gone.title}'", m)
    if obs.nmi_watchdog != ("1" if taker else "0") or obs.rewritable != bool(taker):
        return Verdict(False, f"{obs.cause}; {taker or 'no detector'} took over but "
                       f"nmi_watchdog reads {obs.nmi_watchdog!r} and writing it "
                       f"{'works' if obs.rewritable else 'fails'}", m)
    bad = unexpected(before)
    if bad:
        return Verdict(False, f"{obs.cause}; meanwhile: {describe(bad)}", m)
    head = (f"{obs.cause}; '{off.title}', then {taker or 'no detector'} took over"
            f"{'' if taker else ' (no PMU for perf)'}, nmi_watchdog {obs.nmi_watchdog}")
    if obs.then_lockup is None:
        return Verdict(True, head, m)
    then = lockup(obs.then_lockup, events, spec, known[taker or "perf"])
    m["lockup_after"] = then.measurements
    return Verdict(then.passed, f"{head}; then {then.reason}", m)
