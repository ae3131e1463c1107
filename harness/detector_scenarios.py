"""Scenarios about the hardlockup detector itself rather than one lockup:
is it on and ticking at a sane NMI rate, does it see several CPUs locked at
once, does it honour watchdog_cpumask and run-time changes, does it decline
cleanly, and does it leave other NMI users alone.

Each scenario acts and records an observation; harness.detector_verdicts
judges it (the measurements keep it, as "observation").
"""
import dataclasses
import re
import time

from harness import detector_verdicts as dv, detectors, expectations, lockup_verdicts as lv
from harness.console_events import EventKind
from harness.detector_verdicts import cpulist, expected_decline
from harness.errors import HarnessError
from harness.qemu import Guest
from harness.scenarios import (BAD_KINDS, LOCKUP_KINDS, Result, events_upto, judged, mark,
                               since, wait_event, check_cpu, inject_command, nmi_counts,
                               observe_lockup)

HLD_DEBUGFS = detectors.HPET.debugfs


def observe(guest: Guest, seconds: float, kinds) -> list:
    """Watch the console for `seconds`; stop early if any of `kinds` shows."""
    start = mark(guest)
    guest.console.wait_until(lambda: bool(since(guest, start, kinds)),
                             time.monotonic() + seconds, guest.alive)
    return since(guest, start, kinds)


def _read(guest: Guest, path: str) -> str:
    return guest.check(f"cat {path}").strip()


def enabled(guest: Guest, detector: str) -> Result:
    """The detector is on, every monitored CPU takes its NMIs at one rate."""
    det, spec = detectors.get(detector), guest.spec
    off = lv.said_off(det, guest.console.text)
    start = mark(guest)
    got: dict = {}
    runs, _ = expectations.detector_runs(detector, off, spec)
    if runs:
        got["nmi_watchdog"] = _read(guest, "/proc/sys/kernel/nmi_watchdog")
        got["enabled_said"] = bool(guest.console.events("detector_enabled"))
    if runs and det.debugfs and got["nmi_watchdog"] == "1" and got["enabled_said"]:
        got["monitored"] = sorted(cpulist(_read(guest, f"{det.debugfs}/monitored_cpus")))
        got["channel"] = int(_read(guest, f"{det.debugfs}/channel"))
        got["handling_cpu"] = int(_read(guest, f"{det.debugfs}/handling_cpu"))
        start = mark(guest)
        before, t0 = nmi_counts(guest), time.monotonic()
        observe(guest, 5.0 * spec.watchdog_thresh, BAD_KINDS + LOCKUP_KINDS)
        after, t1 = nmi_counts(guest), time.monotonic()
        got.update(nmis_before=before, nmis_after=after, elapsed_s=round(t1 - t0, 3),
                   tsc_error_ns={k: int(_read(guest, f"{det.debugfs}/tsc_error_{k}_ns"))
                                 for k in ("min", "max", "last")})
    obs = dv.Enabled(start=start, end=mark(guest), off_message=off, **got)
    return judged("enabled", guest, dv.enabled(obs, events_upto(guest, start, obs.end),
                                               spec, det), obs)


def many_locked(guest: Guest, detector: str, cpus: list[int]) -> Result:
    """Lock several CPUs at once; each must be reported, if it can be."""
    for cpu in cpus:
        check_cpu(guest, cpu)
    n = guest.spec.cpus
    name = "all-locked" if len(cpus) == n else f"{len(cpus)}-of-{n}-locked"
    det, thresh = detectors.get(detector), guest.spec.watchdog_thresh
    hold_ms = lv.hold_ms(lv.bound_s(EventKind.HARD_LOCKUP, det, thresh), thresh)
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
    obs = dv.ManyLocked(start=start, end=mark(guest), cpus=cpus,
                        injected_at={c: e.time for c, e in injected.items()}, thresh=thresh,
                        off_message=lv.said_off(det, guest.console.text))
    return judged(name, guest, dv.many_locked(obs, events_upto(guest, start, obs.end),
                                              guest.spec, det), obs)


def cpumask_excluded(guest: Guest, detector: str, cpu: int) -> Result:
    """A CPU outside watchdog_cpumask is never reported, whatever it does."""
    check_cpu(guest, cpu)
    n = guest.spec.cpus
    if n < 2:
        raise HarnessError("cpumask-excluded needs at least 2 CPUs")
    name = f"cpumask-excluded@cpu{cpu}"
    keep = ",".join(str(c) for c in range(n) if c != cpu)
    guest.check(f"echo {keep} > /proc/sys/kernel/watchdog_cpumask")
    try:
        obs = observe_lockup(guest, detector, cpu, "irqoff", EventKind.HARD_LOCKUP, name=name)
    finally:
        guest.check(f"echo 0-{n - 1} > /proc/sys/kernel/watchdog_cpumask")
    return judged(name, guest, dv.excluded(obs, events_upto(guest, obs.start, obs.end)),
                  obs, cpu=cpu)


def sysrq_backtrace(guest: Guest, detector: str) -> Result:
    """Other NMI users still work: sysrq-l backtraces every CPU by NMI."""
    start = mark(guest)
    guest.check("echo l > /proc/sysrq-trigger")

    def seen():
        text = "\n".join(guest.console.text.split("\n")[start:])
        return {int(m.group(1)) for m in dv.BACKTRACE.finditer(text)}

    guest.console.wait_until(lambda: len(seen()) >= guest.spec.cpus,
                             time.monotonic() + 10 * guest.scale, guest.alive)
    obs = dv.Window(start, mark(guest))
    text = "\n".join(guest.console.text.split("\n")[start:obs.end])
    return judged("sysrq-backtrace", guest, dv.sysrq_backtrace(
        obs, events_upto(guest, start, obs.end), text, guest.spec), obs)


def _set(guest: Guest, knob: str, value) -> None:
    guest.check(f"echo {value} > /proc/sys/kernel/{knob}")


def _quiet_lockup(guest: Guest, detector: str, cpu: int, seconds: float) -> lv.Lockup:
    """Lock `cpu` while the detector is off: the record."""
    start = mark(guest)
    guest.send(inject_command("lockup_inject", "irqoff", cpu, int(seconds * 1000)))
    injected = wait_event(guest, start, "lockup_injected", cpu, 10)
    if injected is None:
        raise guest.failure(f"no injection marker for cpu {cpu}")
    wait_event(guest, start, "lockup_released", cpu, seconds + 30)
    guest.check("true", timeout=30)
    return lv.Lockup(start=start, end=mark(guest), kind=EventKind.HARD_LOCKUP, cpu=cpu,
                     expect=None, injected_at=injected.time,
                     thresh=guest.spec.watchdog_thresh)


def _judge_steps(guest: Guest, detector: str, name: str, obs: dv.Steps) -> Result:
    first = min((st.lockup.start for st in obs.steps), default=0)
    return judged(name, guest, dv.steps(obs, events_upto(guest, first, mark(guest)),
                                        guest.spec, detectors.get(detector)), obs)


def runtime_changes(guest: Guest, detector: str) -> Result:
    """watchdog_thresh 10 -> 4 -> 0 -> 2 and nmi_watchdog 0 -> 1 at run time:
    detection works when on, nothing fires when off. A lockup while off is
    held a second past the latest report the last setting that was on
    would have given."""
    name = "runtime-changes"
    spec0, n = guest.spec, guest.spec.cpus
    target = n - 1
    obs = dv.Steps([])
    plan = [("watchdog_thresh", 10, None), ("watchdog_thresh", 4, True),
            ("watchdog_thresh", 0, False), ("watchdog_thresh", 2, True),
            ("nmi_watchdog", 0, False), ("nmi_watchdog", 1, True)]
    last_on = spec0.watchdog_thresh
    try:
        for knob, value, reported in plan:
            _set(guest, knob, value)
            if knob == "watchdog_thresh":
                guest.spec = spec0.with_(watchdog_thresh=value)   # bounds follow
                last_on = value or last_on
            if reported is None:
                continue
            quiet_s = expectations.hard_lockup_bound_s(detector, last_on) + 1
            lockup = observe_lockup(guest, detector, target, "irqoff", EventKind.HARD_LOCKUP,
                                    name=name) if reported else \
                _quiet_lockup(guest, detector, target, quiet_s)
            label = f"thresh={value}" if knob == "watchdog_thresh" else f"{knob}={value}"
            obs = dv.Steps(obs.steps + [dv.Step(label, lockup, reported)])
            if not _judge_steps(guest, detector, name, obs).passed:
                break
        return _judge_steps(guest, detector, name, obs)
    finally:
        _set(guest, "nmi_watchdog", 1)
        _set(guest, "watchdog_thresh", spec0.watchdog_thresh)
        guest.spec = spec0


def handling_cpu_hotplug(guest: Guest, detector: str) -> Result:
    """Offline the CPU that takes the HPET NMI (moving it off CPU 0 first,
    which x86 cannot offline): detection still works, on it once back too."""
    name = "handling-cpu-hotplug"
    n = guest.spec.cpus
    if n < 3:
        raise HarnessError("handling-cpu-hotplug needs at least 3 CPUs")
    debugfs = detectors.get(detector).debugfs
    try:
        _set(guest, "watchdog_cpumask", f"1-{n - 1}")
        h = int(_read(guest, f"{debugfs}/handling_cpu")) if debugfs else 1
        guest.check(f"echo 0 > /sys/devices/system/cpu/cpu{h}/online")
        target = n - 1 if h != n - 1 else n - 2
        obs = dv.Steps([dv.Step(f"cpu{h} offline, lockup on cpu{target}", observe_lockup(
            guest, detector, target, "irqoff", EventKind.HARD_LOCKUP, name=name))],
            said=[f"handling cpu {h}"])
        if _judge_steps(guest, detector, name, obs).passed:
            guest.check(f"echo 1 > /sys/devices/system/cpu/cpu{h}/online")
            obs = dv.Steps(obs.steps + [dv.Step(f"cpu{h} back, lockup on it", observe_lockup(
                guest, detector, h, "irqoff", EventKind.HARD_LOCKUP, name=name))], obs.said)
        return _judge_steps(guest, detector, name, obs)
    finally:
        for cpu in range(1, n):
            guest.run(f"echo 1 > /sys/devices/system/cpu/cpu{cpu}/online")
        _set(guest, "watchdog_cpumask", f"0-{n - 1}")


def _console_wait(guest: Guest, pattern: str, seconds: float, after: int = 0):
    """The first match of `pattern` in the console from offset `after`,
    waiting up to `seconds` (scaled) for it; None if it never came."""
    rx = re.compile(pattern, re.M)
    guest.console.wait_until(lambda: bool(rx.search(guest.console.text, after)),
                             time.monotonic() + seconds * guest.scale, guest.alive)
    return rx.search(guest.console.text, after)


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
    det, spec = detectors.get(detector), guest.spec
    if not det.hpet_channel:
        raise HarnessError("irq-path is about the HPET detector (--detector hpet)")
    path = expectations.hpet_path(spec)
    thresh = max(spec.watchdog_thresh, 1)
    got: dict = {}
    watch_from = mark(guest)
    if path.outcome == "declines":
        _console_wait(guest, re.escape(path.says), 20)
        got["debugfs"] = guest.run(f"test -e {det.debugfs}").status == 0
        got["nmi_watchdog"] = _read(guest, "/proc/sys/kernel/nmi_watchdog")
    elif (on := _console_wait(guest, dv.ENABLED_ON, 20)):
        channel = int(on.group(1))
        got["chips"] = channel_chips(guest, channel)
        if path.outcome == "enabled":
            before = int(_read(guest, f"{det.debugfs}/nmis"))
            watch_from = mark(guest)
            observe(guest, 2.0 * thresh, BAD_KINDS + LOCKUP_KINDS)
            got["nmis"] = [before, int(_read(guest, f"{det.debugfs}/nmis"))]
        else:       # disabled: the channel's interrupt never arrives
            _console_wait(guest, path.says, path.disable_bound_s(spec.watchdog_thresh) + 10,
                          on.start())
            got["nmis"] = [int(_read(guest, f"{det.debugfs}/nmis"))]
            got["nmi_watchdog"] = _read(guest, "/proc/sys/kernel/nmi_watchdog")
            # Nothing hangs, nothing is reported: the guest answers and prints
            # no lockup or other bad event for 2 x thresh.
            observe(guest, 2.0 * thresh, BAD_KINDS + LOCKUP_KINDS)
            guest.check("true")
        got["restarts"] = int(_read(guest, f"{det.debugfs}/restarts"))
    obs = dv.IrqPath(end=mark(guest), watch_from=watch_from, **got)
    text = "\n".join(guest.console.text.split("\n")[:obs.end])
    return judged("irq-path", guest, dv.irq_path(obs, events_upto(guest, 0, obs.end), text,
                                                 spec), obs)


def declines(guest: Guest, detector: str) -> Result:
    """The HPET detector declines with the right reason and reserves nothing;
    the guest still boots and idles clean."""
    if expected_decline(guest.spec) is None:
        raise HarnessError(f"{guest.spec.label()}: nothing here makes the HPET detector "
                           "decline")
    said = [e.title for e in guest.console.events("detector_disabled") if "hpet_hld" in e.text]
    enabled_said = bool(guest.console.events("detector_enabled"))
    reserved = guest.run(f"test -e {HLD_DEBUGFS}/channel").status == 0
    start = mark(guest)
    observe(guest, 3.0 * max(guest.spec.watchdog_thresh, 1), BAD_KINDS + LOCKUP_KINDS)
    obs = dv.Declined(start, mark(guest), said, enabled_said, reserved)
    return judged("declines", guest, dv.declines(obs, events_upto(guest, start, obs.end),
                                                 guest.spec), obs)


TSC_UNSTABLE = "/sys/kernel/debug/lockup_inject/tsc_unstable"


def detector_lost(guest: Guest, detector: str) -> Result:
    """The HPET detector stops working at run time: where it runs, the TSC
    it times its NMIs with is marked unstable (as the clocksource watchdog
    does); where its MSI is blocked (expectations.PATHS: disabled), it
    notices by itself. The kernel must say so, the detector its kernel
    falls back to must take over (buddy on the buddy-fallback flavour,
    perf where a PMU is) or the kernel must say the hard watchdog is off,
    nmi_watchdog must agree, and a hard lockup on the last CPU afterwards
    is reported by the fallback, or by nobody. The guest is retired."""
    spec = guest.spec
    if detector != "hpet":
        raise HarnessError("detector-lost is a scenario of the hpet detector")
    if spec.cpus < 2:
        raise HarnessError("detector-lost needs at least 2 CPUs (the buddy fallback "
                           "checks a CPU from its neighbour)")
    path = expectations.hpet_path(spec)
    if path.outcome == "declines":
        raise HarnessError(f"{spec.label()}: the HPET detector declines at boot here; "
                           "detector-lost needs it enabled first")
    try:
        return _detector_lost(guest, path, detectors.fallback(spec.flavour))
    finally:
        guest.stop()     # its hardlockup detector is another one now, or none


def _detector_lost(guest: Guest, path, fallback: str) -> Result:
    spec, thresh = guest.spec, guest.spec.watchdog_thresh
    if path.outcome == "enabled":
        start, cause = mark(guest), "the TSC marked unstable"
        guest.check(f"echo 1 > {TSC_UNSTABLE}")
        wait_s = 2 * thresh + 10
    else:
        start, cause = 0, "its MSI blocked"
        wait_s = path.disable_bound_s(thresh) + 10
    lost_kinds = ("detector_handover", "detector_disabled")

    def over() -> bool:
        return any(e.kind == EventKind.DETECTOR_HANDOVER or dv.PERMANENTLY_OFF in e.text
                   for e in since(guest, start, lost_kinds))
    guest.console.wait_until(over, time.monotonic() + wait_s * guest.scale, guest.alive)
    nmi_watchdog = _read(guest, "/proc/sys/kernel/nmi_watchdog")
    rewritable = guest.run("echo 0 > /proc/sys/kernel/nmi_watchdog && "
                           "echo 1 > /proc/sys/kernel/nmi_watchdog").status == 0
    obs = dv.Lost(start=start, end=mark(guest), cause=cause, fallback=fallback,
                  nmi_watchdog=nmi_watchdog, rewritable=rewritable)
    if over():
        _, taker = dv.handed_to(since(guest, start, ("detector_handover",)))
        judge_as = taker or "perf"
        if judge_as in detectors.DETECTORS:
            then = observe_lockup(guest, judge_as, spec.cpus - 1, "irqoff",
                                  EventKind.HARD_LOCKUP, name="detector-lost")
            obs = dataclasses.replace(obs, end=then.end, then_lockup=then)
    v = dv.lost(obs, events_upto(guest, start, obs.end), spec, detectors.DETECTORS)
    return judged("detector-lost", guest, v, obs)
