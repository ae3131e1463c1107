"""Scenarios about the hardlockup detector itself rather than one lockup:
is it on and ticking at a sane NMI rate, does it see several CPUs locked at
once, does it honour watchdog_cpumask and run-time changes, does it decline
cleanly, and does it leave other NMI users alone.
"""
import re
import time

from harness import expectations
from harness.errors import HarnessError
from harness.qemu import Guest
from harness.scenarios import (BAD_KINDS, LOCKUP_KINDS, Result, describe, mark,
                               since, wait_event, check_cpu, hard_lockup,
                               inject_command, nmi_counts, nmi_rate_problem,
                               repeated_reports)

HLD_DEBUGFS = "/sys/kernel/debug/x86/hpet_hld"


def cpulist(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in filter(None, text.strip().split(",")):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def observe(guest: Guest, seconds: float, kinds) -> list:
    """Watch the console for `seconds`; stop early if any of `kinds` shows."""
    start = mark(guest)
    guest.console.wait_until(lambda: bool(since(guest, start, kinds)),
                             time.monotonic() + seconds, guest.alive)
    return since(guest, start, kinds)


def enabled(guest: Guest, detector: str) -> Result:
    """The detector is on, every monitored CPU takes its NMIs at one rate."""
    name, label = "enabled", guest.spec.label()
    thresh = guest.spec.watchdog_thresh
    m: dict = {}
    runs, why = expectations.detector_runs(detector, guest.console.text,
                                              guest.spec)
    if not runs:
        return Result(name, label, True, f"{detector} detector off, as expected: {why}", m)
    if guest.check("cat /proc/sys/kernel/nmi_watchdog").strip() != "1":
        return Result(name, label, False, "nmi_watchdog does not read 1", m)
    if detector != "hpet":
        return Result(name, label, True, f"{detector} detector on", m)
    on = guest.console.events("detector_enabled")
    if not on:
        return Result(name, label, False, "no 'hpet_hld: enabled' line", m)
    monitored = cpulist(guest.check(f"cat {HLD_DEBUGFS}/monitored_cpus"))
    m["channel"] = int(guest.check(f"cat {HLD_DEBUGFS}/channel"))
    m["handling_cpu"] = int(guest.check(f"cat {HLD_DEBUGFS}/handling_cpu"))
    if monitored != set(range(guest.spec.cpus)):
        return Result(name, label, False, f"monitoring {sorted(monitored)}, not all CPUs", m)
    window = 5.0 * thresh
    before, t0 = nmi_counts(guest), time.monotonic()
    bad = observe(guest, window, BAD_KINDS + LOCKUP_KINDS)
    after, t1 = nmi_counts(guest), time.monotonic()
    rates = [round((a - b) / (t1 - t0), 3) for a, b in zip(after, before)]
    m["nmi_per_cpu_per_s"] = rates
    m["tsc_error_ns"] = {k: int(guest.check(f"cat {HLD_DEBUGFS}/tsc_error_{k}_ns"))
                         for k in ("min", "max", "last")}
    if bad:
        return Result(name, label, False, "while idle: " + describe(bad), m)
    problem = nmi_rate_problem(rates, thresh)
    if problem:
        return Result(name, label, False, problem, m)
    if max(rates) - min(rates) > 0.25 * max(rates):
        return Result(name, label, False, f"CPUs take NMIs at unequal rates: {rates}", m)
    return Result(name, label, True, f"channel {m['channel']}, handling cpu "
                  f"{m['handling_cpu']}, {min(rates):.2f}-{max(rates):.2f} NMI/s per CPU", m)


def many_locked(guest: Guest, detector: str, cpus: list[int]) -> Result:
    """Lock several CPUs at once; each must be reported, if it can be."""
    for cpu in cpus:
        check_cpu(guest, cpu)
    n = guest.spec.cpus
    name = "all-locked" if len(cpus) == n else f"{len(cpus)}-of-{n}-locked"
    label = guest.spec.label()
    expected, why = expectations.reported_when_locked(detector, set(cpus), n,
                                                      guest.console.text, guest.spec)
    bound = expectations.hard_lockup_bound_s(detector, guest.spec.watchdog_thresh)
    hold_ms = int((bound + guest.spec.watchdog_thresh + 2) * 1000)
    start = mark(guest)
    lst = ",".join(map(str, cpus))
    guest.send(inject_command("lockup_inject", "irqoff", lst, hold_ms))
    injected = {cpu: wait_event(guest, start, "lockup_injected", cpu, 10) for cpu in cpus}
    missing = [c for c, e in injected.items() if e is None]
    if missing:
        raise guest.failure(f"{name}: no injection marker for cpus {missing}")
    for cpu in cpus:
        wait_event(guest, start, "lockup_released", cpu, hold_ms / 1000 + 30)
    guest.check("true", timeout=30)
    reports = since(guest, start, ("hard_lockup",))
    reported = {e.cpu for e in reports}
    m = {"cpus": cpus, "reported": sorted(reported, key=str)}
    first = {}
    for e in reports:
        first.setdefault(e.cpu, e.time - injected[e.cpu].time if e.cpu in injected else None)
    m["latency_s"] = {c: round(t, 3) for c, t in first.items() if t is not None}
    bad = since(guest, start, BAD_KINDS)
    if bad:
        return Result(name, label, False, "unexpected: " + describe(bad), m)
    m["expected"] = sorted(expected)
    if reported != expected:
        return Result(name, label, False, f"reported cpus {sorted(reported, key=str)}, "
                      f"expected {sorted(expected)} ({why})", m)
    again = repeated_reports(reports)
    if again:
        m["reports_per_cpu"] = again
        return Result(name, label, False, f"one lockup reported several times: {again} "
                      "(cpu: reports); a hard lockup is reported once until it ends", m)
    late = {c: t for c, t in m["latency_s"].items() if not 0 <= t <= bound}
    if late:
        return Result(name, label, False, f"reports outside 0..{bound:.1f} s: {late}", m)
    return Result(name, label, True, f"{len(expected)} of {len(cpus)} locked cpus "
                  f"reported, as expected: {why}", m)


def cpumask_excluded(guest: Guest, detector: str, cpu: int) -> Result:
    """A CPU outside watchdog_cpumask is never reported, whatever it does."""
    check_cpu(guest, cpu)
    n = guest.spec.cpus
    if n < 2:
        raise HarnessError("cpumask-excluded needs at least 2 CPUs")
    name, label = f"cpumask-excluded@cpu{cpu}", guest.spec.label()
    keep = ",".join(str(c) for c in range(n) if c != cpu)
    guest.check(f"echo {keep} > /proc/sys/kernel/watchdog_cpumask")
    try:
        result = hard_lockup(guest, detector, cpu)
    finally:
        guest.check(f"echo 0-{n - 1} > /proc/sys/kernel/watchdog_cpumask")
    reported = "latency_s" in result.measurements
    if reported:
        return Result(name, label, False, f"cpu {cpu} is outside watchdog_cpumask "
                      "but was reported", result.measurements)
    if not result.measurements.get("injected_at"):
        return Result(name, label, False, result.reason, result.measurements)
    return Result(name, label, True, f"cpu {cpu} locked, outside the mask, "
                  "not reported", result.measurements)


def sysrq_backtrace(guest: Guest, detector: str) -> Result:
    """Other NMI users still work: sysrq-l backtraces every CPU by NMI."""
    name, label = "sysrq-backtrace", guest.spec.label()
    start, offset = mark(guest), len(guest.console.text)
    guest.check("echo l > /proc/sysrq-trigger")
    pat = re.compile(r"NMI backtrace for cpu (\d+)")

    def seen():
        return {int(m.group(1)) for m in pat.finditer(guest.console.text, offset)}

    guest.console.wait_until(lambda: len(seen()) >= guest.spec.cpus,
                             time.monotonic() + 10 * guest.scale, guest.alive)
    got = seen()
    bad = since(guest, start, BAD_KINDS + LOCKUP_KINDS)
    m = {"backtraced": sorted(got)}
    if bad:
        return Result(name, label, False, "unexpected: " + describe(bad), m)
    if got != set(range(guest.spec.cpus)):
        return Result(name, label, False, f"NMI backtraces from cpus {sorted(got)} only", m)
    return Result(name, label, True, "every CPU backtraced, no unknown NMI", m)


def _set(guest: Guest, knob: str, value) -> None:
    guest.check(f"echo {value} > /proc/sys/kernel/{knob}")


def _quiet_lockup(guest: Guest, cpu: int, seconds: float) -> list:
    """Lock `cpu` while the detector is off: return any lockup reports."""
    start = mark(guest)
    guest.send(inject_command("lockup_inject", "irqoff", cpu, int(seconds * 1000)))
    if wait_event(guest, start, "lockup_injected", cpu, 10) is None:
        raise guest.failure(f"no injection marker for cpu {cpu}")
    wait_event(guest, start, "lockup_released", cpu, seconds + 30)
    guest.check("true", timeout=30)
    return since(guest, start, ("hard_lockup",))


def runtime_changes(guest: Guest, detector: str) -> Result:
    """watchdog_thresh 10 -> 2 -> 0 -> 4 and nmi_watchdog 0 -> 1 at run time:
    detection works when on, nothing fires when off."""
    name, label = "runtime-changes", guest.spec.label()
    spec0, n = guest.spec, guest.spec.cpus
    target = n - 1
    steps: list[str] = []
    try:
        for thresh, expect in ((10, None), (2, True), (0, False), (4, True)):
            _set(guest, "watchdog_thresh", thresh)
            guest.spec = spec0.with_(watchdog_thresh=thresh)   # bounds follow
            if expect is None:
                continue
            if expect:
                r = hard_lockup(guest, detector, target)
                steps.append(f"thresh={thresh}: {r.reason}")
                if not r.passed:
                    return Result(name, label, False, "; ".join(steps), r.measurements)
            else:
                got = _quiet_lockup(guest, target, 10)
                steps.append(f"thresh=0: {len(got)} reports")
                if got:
                    return Result(name, label, False, "; ".join(steps) +
                                  " while disabled: " + describe(got), {})
        _set(guest, "nmi_watchdog", 0)
        got = _quiet_lockup(guest, target, 10)
        steps.append(f"nmi_watchdog=0: {len(got)} reports")
        if got:
            return Result(name, label, False, "; ".join(steps), {})
        _set(guest, "nmi_watchdog", 1)
        r = hard_lockup(guest, detector, target)
        steps.append(f"nmi_watchdog=1: {r.reason}")
        return Result(name, label, r.passed, "; ".join(steps), r.measurements)
    finally:
        _set(guest, "nmi_watchdog", 1)
        _set(guest, "watchdog_thresh", spec0.watchdog_thresh)
        guest.spec = spec0


def handling_cpu_hotplug(guest: Guest, detector: str) -> Result:
    """Offline the CPU that takes the HPET NMI (moving it off CPU 0 first,
    which x86 cannot offline): detection still works, on it once back too."""
    name, label = "handling-cpu-hotplug", guest.spec.label()
    n = guest.spec.cpus
    if n < 3:
        raise HarnessError("handling-cpu-hotplug needs at least 3 CPUs")
    steps: list[str] = []
    try:
        _set(guest, "watchdog_cpumask", f"1-{n - 1}")
        h = int(guest.check(f"cat {HLD_DEBUGFS}/handling_cpu")) if detector == "hpet" else 1
        steps.append(f"handling cpu {h}")
        guest.check(f"echo 0 > /sys/devices/system/cpu/cpu{h}/online")
        target = n - 1 if h != n - 1 else n - 2
        r = hard_lockup(guest, detector, target)
        steps.append(f"cpu{h} offline, lockup on cpu{target}: {r.reason}")
        if not r.passed:
            return Result(name, label, False, "; ".join(steps), r.measurements)
        guest.check(f"echo 1 > /sys/devices/system/cpu/cpu{h}/online")
        r = hard_lockup(guest, detector, h)
        steps.append(f"cpu{h} back, lockup on it: {r.reason}")
        return Result(name, label, r.passed, "; ".join(steps), r.measurements)
    finally:
        for cpu in range(1, n):
            guest.run(f"echo 1 > /sys/devices/system/cpu/cpu{cpu}/online")
        _set(guest, "watchdog_cpumask", f"0-{n - 1}")


def expected_decline(spec) -> str | None:
    """The reason the HPET detector must give for not running on `spec`."""
    if spec.nmi_watchdog != "hpet":
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


REMAP_ON = r"DMAR-IR: Enabled IRQ remapping in (\w+) mode"
ENABLED_ON = r"hpet_hld: enabled on channel (\d+), handling CPU"


def _console_wait(guest: Guest, pattern: str, seconds: float, after: int = 0):
    """The first match of `pattern` in the console from offset `after`,
    waiting up to `seconds` (scaled) for it; None if it never came."""
    rx = re.compile(pattern, re.M)
    guest.console.wait_until(lambda: bool(rx.search(guest.console.text, after)),
                             time.monotonic() + seconds * guest.scale, guest.alive)
    return rx.search(guest.console.text, after)


def _kernel_time(text: str, offset: int) -> float | None:
    """The printk timestamp of the console line holding `offset`."""
    start = text.rfind("\n", 0, offset) + 1
    m = re.match(r"\[\s*(\d+\.\d+)\]", text[start:])
    return float(m.group(1)) if m else None


def channel_chips(guest: Guest, channel: int) -> list[str]:
    """The irq chips of the HPET channel's interrupt: /sys/kernel/irq/N with
    that hwirq and an HPET chip (the NMI has no action, so /proc/interrupts
    does not show it)."""
    out = guest.check("for d in /sys/kernel/irq/*; do echo \"$(cat $d/hwirq) "
                      "$(cat $d/chip_name)\"; done")
    return [chip for hw, _, chip in (line.partition(" ") for line in out.splitlines())
            if hw == str(channel) and "HPET" in chip]


def irq_path(guest: Guest, detector: str) -> Result:
    """The HPET detector takes the path expectations.PATHS gives for this
    machine (APIC mode x IOMMU x comparator rule), checked in the guest:
    Linux's remapping mode, the HPET in the DMAR or not, the channel's irq
    chip, the detector's debugfs, and for a blocked channel the fault, the
    restarts and the message within its bound, with nothing hanging and
    nothing reported meanwhile."""
    name, label, spec = "irq-path", guest.spec.label(), guest.spec
    if detector != "hpet":
        raise HarnessError("irq-path is about the HPET detector (--detector hpet)")
    path = expectations.hpet_path(spec)
    m: dict = {"expected": path.outcome, "expected_chip": path.chip}
    text = guest.console.text
    remap = re.search(REMAP_ON, text)
    m["remap"] = remap.group(1) if remap else None
    if m["remap"] != path.remap:
        return Result(name, label, False, f"interrupt remapping {m['remap'] or 'off'}, "
                      f"expected {path.remap or 'off'}", m)
    described = expectations.HPET_IN_DMAR in text
    if described != (spec.iommu_mode == "described"):
        return Result(name, label, False, f"'{expectations.HPET_IN_DMAR}' "
                      f"{'printed' if described else 'missing'} with iommu={spec.iommu_mode}", m)
    if path.outcome == "declines":
        said = _console_wait(guest, re.escape(path.says), 20)
        if not said:
            return Result(name, label, False, f"no '{path.says}'", m)
        if re.search(ENABLED_ON, guest.console.text):
            return Result(name, label, False, "enabled although it declined", m)
        if guest.run(f"test -e {HLD_DEBUGFS}").status == 0:
            return Result(name, label, False, f"{HLD_DEBUGFS} exists: a channel is taken", m)
        m["nmi_watchdog"] = guest.check("cat /proc/sys/kernel/nmi_watchdog").strip()
        fallback = re.search(r"NMI watchdog: .*", guest.console.text)
        m["fallback"] = fallback.group(0).strip() if fallback else None
        return Result(name, label, True, f"declined at probe: '{path.says}'; "
                      f"fallback: {m['fallback'] or 'none printed'}", m)
    on = _console_wait(guest, ENABLED_ON, 20)
    if not on:
        return Result(name, label, False, "no 'hpet_hld: enabled on channel' line", m)
    channel = int(on.group(1))
    m["channel"] = channel
    m["chips"] = channel_chips(guest, channel)
    if m["chips"] != [path.chip]:
        return Result(name, label, False, f"channel {channel}'s irq chip {m['chips']}, "
                      f"expected {path.chip}", m)
    thresh = max(spec.watchdog_thresh, 1)
    if path.outcome == "enabled":
        before = int(guest.check(f"cat {HLD_DEBUGFS}/nmis"))
        bad = observe(guest, 2.0 * thresh, BAD_KINDS + LOCKUP_KINDS)
        m["nmis"] = [before, int(guest.check(f"cat {HLD_DEBUGFS}/nmis"))]
        m["restarts"] = int(guest.check(f"cat {HLD_DEBUGFS}/restarts"))
        off = re.search(r"hpet_hld: (disabled|not used)\b.*", guest.console.text)
        if bad:
            return Result(name, label, False, "unexpected: " + describe(bad), m)
        if off:
            return Result(name, label, False, f"then: {off.group(0)}", m)
        if m["nmis"][1] <= m["nmis"][0]:
            return Result(name, label, False, f"no NMI from channel {channel} through "
                          f"{path.chip} in {2 * thresh} s (nmis {m['nmis']})", m)
        if m["restarts"]:
            return Result(name, label, False, f"channel restarted {m['restarts']} times", m)
        return Result(name, label, True, f"enabled on channel {channel} through "
                      f"{path.chip}, {m['nmis'][1] - m['nmis'][0]} NMIs in "
                      f"{2 * thresh} s", m)
    # disabled: the channel's interrupt never arrives.
    bound = path.disable_bound_s(spec.watchdog_thresh)
    gone = _console_wait(guest, path.says, bound + 10, on.start())
    if not gone:
        return Result(name, label, False, f"no '{path.says}' within {bound + 10:.0f} s "
                      "of enabling", m)
    t_on, t_off = _kernel_time(guest.console.text, on.start()), \
        _kernel_time(guest.console.text, gone.start())
    m["disabled_after_s"] = round(t_off - t_on, 3) if None not in (t_on, t_off) else None
    if int(gone.group("channel")) != channel:
        return Result(name, label, False, f"disabled channel {gone.group('channel')}, "
                      f"enabled {channel}", m)
    if m["disabled_after_s"] is None or not 0 < m["disabled_after_s"] <= bound:
        return Result(name, label, False, f"disabled {m['disabled_after_s']} s after "
                      f"enabling, bound {bound:.1f} s", m)
    faults = re.findall(expectations.COMPAT_BLOCKED, guest.console.text)
    m["faults_25h"] = len(faults)
    if path.fault_25h and not faults:
        return Result(name, label, False, "no fault 25h (compatibility format blocked) "
                      "from ff:0f.0 recorded", m)
    m["nmis"] = int(guest.check(f"cat {HLD_DEBUGFS}/nmis"))
    m["restarts"] = int(guest.check(f"cat {HLD_DEBUGFS}/restarts"))
    if m["nmis"] or not m["restarts"]:
        return Result(name, label, False, f"debugfs: {m['nmis']} NMIs, {m['restarts']} "
                      "restarts (expected none, and at least one)", m)
    # Given up (series v3, watchdog_hardlockup_lost()): nmi_watchdog says so.
    m["nmi_watchdog"] = guest.check("cat /proc/sys/kernel/nmi_watchdog").strip()
    if m["nmi_watchdog"] != "0":
        return Result(name, label, False, f"the detector gave up but "
                      f"/proc/sys/kernel/nmi_watchdog reads {m['nmi_watchdog']!r}, not '0'", m)
    # Nothing hangs, nothing is reported: the guest answers and prints no
    # lockup or other bad event (the expected faults aside) for 2 x thresh.
    bad = [e for e in since(guest, 0, BAD_KINDS + LOCKUP_KINDS)
           if not (e.kind == "dmar_fault" and ("0x25" in e.text or "fault status" in e.text))]
    bad += observe(guest, 2.0 * thresh, BAD_KINDS + LOCKUP_KINDS)
    guest.check("true")
    if bad:
        return Result(name, label, False, "unexpected: " + describe(bad), m)
    return Result(name, label, True, f"channel {channel} on {path.chip}: its MSI blocked "
                  f"({len(faults)} faults 25h), {m['restarts']} restarts, then "
                  f"'{gone.group(0)}' after {m['disabled_after_s']} s "
                  f"(bound {bound:.0f} s); nothing reported", m)


def declines(guest: Guest, detector: str) -> Result:
    """The HPET detector declines with the right reason and reserves nothing;
    the guest still boots and idles clean."""
    name, label = "declines", guest.spec.label()
    why = expected_decline(guest.spec)
    if why is None:
        raise HarnessError(f"{label}: nothing here makes the HPET detector decline")
    said = [e for e in guest.console.events("detector_disabled") if "hpet_hld" in e.text]
    m = {"said": [e.title for e in said]}
    if guest.console.events("detector_enabled"):
        return Result(name, label, False, "enabled although " + why, m)
    if not any(why in e.text for e in said):
        return Result(name, label, False, f"no 'hpet_hld: not used: {why}' line", m)
    if guest.run(f"test -e {HLD_DEBUGFS}/channel").status == 0:
        return Result(name, label, False, "a channel is reserved anyway", m)
    bad = observe(guest, 3.0 * max(guest.spec.watchdog_thresh, 1), BAD_KINDS + LOCKUP_KINDS)
    if bad:
        return Result(name, label, False, "while idle: " + describe(bad), m)
    return Result(name, label, True, f"declined: {why}; idle clean", m)
