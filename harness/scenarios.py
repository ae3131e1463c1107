"""Lockup scenarios: act on a live guest, then judge from what the kernel printed.

Each scenario returns a Result with a verdict, the reason for it, and the
measurements (detection latency from kernel timestamps) for the report.
"""
import time
from dataclasses import dataclass, field

from harness import detectors, expectations, verdicts
from harness.console_events import Event, describe
from harness.errors import HarnessError
from harness.qemu import Guest

INJECT = "/sys/kernel/debug/lockup_inject/inject"
BAD_KINDS = ("oops", "bug", "gpf", "warning", "unknown_nmi", "dmar_fault", "panic",
             "lockdep", "invalid_context", "kasan")
LOCKUP_KINDS = ("hard_lockup", "soft_lockup", "rcu_stall", "hung_task",
                "workqueue_lockup", "spinlock_lockup")
IRQ_REMAP_ON = "DMAR-IR: Enabled IRQ remapping"


@dataclass
class Result:
    scenario: str
    machine: str
    passed: bool
    reason: str
    measurements: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"scenario": self.scenario, "machine": self.machine,
                "passed": self.passed, "reason": self.reason,
                "measurements": self.measurements}


def since(guest: Guest, line: int, kinds=None) -> list[Event]:
    return [e for e in guest.console.events()
            if e.line > line and (kinds is None or e.kind in kinds)]


def mark(guest: Guest) -> int:
    """The console position (last line number) before an action."""
    guest.console.refresh()
    return guest.console.text.count("\n")


def _count_kinds(events: list[Event]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in events:
        counts[e.kind] = counts.get(e.kind, 0) + 1
    return counts




def check_cpu(guest: Guest, cpu: int) -> None:
    if not 0 <= cpu < guest.spec.cpus:
        raise HarnessError(f"cpu {cpu} is outside the guest (cpus 0-{guest.spec.cpus - 1})")


def boot(guest: Guest, detector: str) -> Result:
    """The guest booted clean and the hardlockup detector is on."""
    name, label = "boot", guest.spec.label()
    bad = since(guest, 0, BAD_KINDS)
    nmi_wd = guest.check("cat /proc/sys/kernel/nmi_watchdog").strip()
    m = {"boot_seconds": round(getattr(guest, "boot_seconds", 0.0), 2),
         "settle_seconds": round(getattr(guest, "settle_seconds", 0.0), 2),
         "nmi_watchdog": nmi_wd}
    booted = guest.console.events("boot_complete")
    if booted and booted[-1].time is not None:
        m["kernel_boot_seconds"] = booted[-1].time
    if bad:
        return Result(name, label, False, "bad console events: " + describe(bad), m)
    online = guest.check("cat /sys/devices/system/cpu/online").strip()
    want_online = "0" if guest.spec.cpus == 1 else f"0-{guest.spec.cpus - 1}"
    if online != want_online:
        return Result(name, label, False, f"CPUs online {online!r}, want {want_online!r}", m)
    remapping = IRQ_REMAP_ON in guest.console.text
    if remapping != guest.spec.iommu:
        return Result(name, label, False, "interrupt remapping is "
                      f"{'on' if remapping else 'off'} but the IOMMU is "
                      f"{'on' if guest.spec.iommu else 'off'}", m)
    runs, why = expectations.detector_runs(detector, guest.console.text,
                                              guest.spec)
    if nmi_wd != ("1" if runs else "0"):
        return Result(name, label, False, f"/proc/sys/kernel/nmi_watchdog reads "
                      f"{nmi_wd!r}, want '{1 if runs else 0}'{' (' + why + ')' if why else ''}", m)
    if not runs:
        return Result(name, label, True, f"clean boot, {detector} detector off: {why}", m)
    return Result(name, label, True, f"clean boot, {detector} detector on", m)


SOAK_CHECK_S = 60    # how often a soaking guest must still answer


def nmi_counts(guest: Guest) -> list[int]:
    """Per-CPU NMI counts from /proc/interrupts, CPU 0 up; its columns are
    read from the header by verdicts.nmi_counts (online CPUs only)."""
    counts = verdicts.nmi_counts(guest.check("cat /proc/interrupts"))
    if not counts:
        raise HarnessError("no NMI line in /proc/interrupts")
    missing = [c for c in range(guest.spec.cpus) if c not in counts]
    if missing:
        raise HarnessError(f"no NMI column for cpus {missing} in /proc/interrupts (offline?)")
    return [counts[c] for c in range(guest.spec.cpus)]


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


def soak(guest: Guest, detector: str, seconds: float) -> Result:
    """Keep the guest idle for `seconds` and count every lockup report,
    unknown NMI, RCU stall or other bad event: each is a false positive.
    Unlike idle, it does not stop at the first one: the count is the result.

    A quiet soak only means something if the detector was armed all along,
    so the HPET detector's NMIs must have kept coming on every CPU, and a
    real hard lockup at the end (the canary) must still be reported."""
    name, label = "soak", guest.spec.label()
    start = mark(guest)
    before, t0 = nmi_counts(guest), time.monotonic()
    deadline = t0 + seconds
    while time.monotonic() < deadline:
        # Not a wait for an event: the guest is watched for a fixed time.
        guest.console.wait_until(lambda: False, min(deadline, time.monotonic()
                                                   + SOAK_CHECK_S), guest.alive)
        if not guest.alive():
            raise guest.failure(f"soak: the guest died after "
                                f"{seconds - (deadline - time.monotonic()):.0f} s")
        guest.check("true")          # still answering: not hung
    after, t1 = nmi_counts(guest), time.monotonic()
    bad = since(guest, start, LOCKUP_KINDS + BAD_KINDS)
    # Reports from before the window (a boot starved by an overcommitted
    # host) are not the idle detector's doing, but are kept for the record.
    early = [e for e in guest.console.events()
             if e.line <= start and e.kind in LOCKUP_KINDS + BAD_KINDS]
    rates = [round((a - b) / (t1 - t0), 3) for a, b in zip(after, before)]
    m = {"soak_seconds": seconds, "false_positives": len(bad), "by_kind": _count_kinds(bad),
         "before_soak": _count_kinds(early), "nmi_per_cpu_per_s": rates,
         # Kept for the record, not false positives (see console_events).
         "nmi_slow": [e.title for e in since(guest, start, ("nmi_slow",))]}
    if bad:
        return Result(name, label, False, f"{len(bad)} false positives in {seconds:.0f} s: "
                      + describe(bad), m)
    runs, _ = expectations.detector_runs(detector, guest.console.text, guest.spec)
    problem = nmi_rate_problem(rates, guest.spec.watchdog_thresh) \
        if runs and detectors.get(detector).nmis_per_thresh else None
    if problem:
        return Result(name, label, False, f"the detector did not stay armed: {problem}", m)
    canary = hard_lockup(guest, detector, guest.spec.cpus - 1)
    m["canary"] = {"passed": canary.passed, "reason": canary.reason,
                   "latency_s": canary.measurements.get("latency_s")}
    if not canary.passed:
        return Result(name, label, False, "no false positive, but a hard lockup after "
                      f"the soak was judged wrong: {canary.reason}", m)
    return Result(name, label, True, f"no false positive in {seconds:.0f} s idle; "
                  f"then {canary.reason}", m)


def idle(guest: Guest, periods: int = 3) -> Result:
    """Watch an idle guest for periods x watchdog_thresh: nothing may fire."""
    name, label = "idle", guest.spec.label()
    start = mark(guest)
    window = periods * max(guest.spec.watchdog_thresh, 1)
    # Observation window, not a wait for something: any event ends it early.
    guest.console.wait_until(lambda: bool(since(guest, start, LOCKUP_KINDS + BAD_KINDS)),
                             time.monotonic() + window, guest.alive)
    guest.check("true")   # the guest still answers
    bad = since(guest, start, LOCKUP_KINDS + BAD_KINDS)
    m = {"window_seconds": window}
    if bad:
        return Result(name, label, False, "false positive while idle: " + describe(bad), m)
    return Result(name, label, True, f"nothing reported in {window} s idle", m)


INJECTORS = ("lockup_inject", "test_lockup")
LKDTM_DIRECT = "/sys/kernel/debug/provoke-crash/DIRECT"


def inject_command(injector: str, mode: str, cpu: int | str, ms: int) -> str:
    """The guest shell command that locks up `cpu` (or a cpulist such as
    "1,2,3") in `mode` for `ms`."""
    if injector == "lockup_inject":
        return f"echo '{mode} {cpu} {ms}' > {INJECT}"
    if injector == "test_lockup":
        # test_lockup locks up the CPU its loader runs on and then refuses
        # to load (EAGAIN) by design: pin it and let it fail in the
        # background. loadmod, not busybox insmod, which would load it twice.
        flag = {"irqoff": "disable_irq=1", "preemptoff": "disable_preempt=1"}[mode]
        secs = max(1, round(ms / 1000))
        return (f"taskset -c {cpu} loadmod /lib/modules/test_lockup.ko "
                f"time_secs={secs} {flag} >/dev/null 2>&1 &")
    raise HarnessError(f"unknown injector {injector!r}; known: {', '.join(INJECTORS)}")


NUDGE = "echo 'harness: console nudge' > /dev/kmsg"


def wait_event(guest: Guest, start: int, kind: str, cpu: int | None,
                timeout: float, nudge_cpus: str | None = None) -> Event | None:
    """Wait for an event on the console after line `start`.

    nudge_cpus: a report printed in NMI context on a CPU that stays locked
    (the HPET and perf detectors check each CPU from its own NMI) sits in
    the printk buffer until some other CPU prints: print from those CPUs
    once a second meanwhile.
    """
    def found():
        return [e for e in since(guest, start, (kind,)) if cpu is None or e.cpu == cpu]
    deadline = time.monotonic() + timeout * guest.scale
    while True:
        step = min(deadline, time.monotonic() + 1.0) if nudge_cpus else deadline
        if guest.console.wait_until(lambda: bool(found()), step, guest.alive) \
                or time.monotonic() >= deadline or not guest.alive():
            break
        guest.send(f"taskset -c {nudge_cpus} sh -c \"{NUDGE}\"")
    got = found()
    return got[0] if got else None


def _lockup(guest: Guest, cpu: int, mode: str, report_kind: str, bound_s: float,
            visible: bool, why: str, name: str, injector: str,
            expect_cpu: int | None = None) -> Result:
    """Lock up `cpu` and judge the report. expect_cpu is only for the
    canary case, which expects the report on a CPU that was not locked."""
    check_cpu(guest, cpu)
    expect = cpu if expect_cpu is None else expect_cpu
    label = guest.spec.label()
    thresh = guest.spec.watchdog_thresh
    hold_ms = int((bound_s + thresh + 2) * 1000)   # outlast the latest report
    start = mark(guest)
    guest.send(inject_command(injector, mode, cpu, hold_ms))
    injected = wait_event(guest, start, "lockup_injected", cpu, 10)
    if injected is None:
        raise guest.failure(f"{name}: no injection marker for cpu {cpu}")
    # Wait for the report, or (when none is expected) for the lockup to end.
    report = wait_event(guest, start, report_kind, expect, bound_s + 2) if visible else None
    m = {"cpu": cpu, "mode": mode, "injector": injector, "hold_ms": hold_ms,
         "bound_s": bound_s, "injected_at": injected.time}
    if report is not None:
        m["latency_s"] = round(report.time - injected.time, 3)
    if guest.spec.hardlockup_panic and report_kind == "hard_lockup":
        return _panic_verdict(guest, name, label, start, visible, why, injected, m)
    # test_lockup spins on a delay loop, not a clock: under TCG its 14 s
    # have been seen to last 42 s.
    hold_s = hold_ms / 1000 * (4 if injector == "test_lockup" else 1)
    if wait_event(guest, start, "lockup_released", cpu, hold_s + 15) is None:
        raise guest.failure(f"{name}: cpu {cpu} never released its lockup")
    guest.check("true", timeout=30)       # the guest recovered
    if visible and report is None:
        # Reported from an NMI on the locked CPU itself, with no other CPU
        # to print it (1 vCPU): it reaches the console only after the
        # release. Its kernel timestamp still says when it was detected.
        report = wait_event(guest, start, report_kind, expect, 5)
        if report is not None:
            m["latency_s"] = round(report.time - injected.time, 3)
            m["console_delayed"] = True
    return _report_verdict(guest, name, start, report_kind, expect, visible, why, m)


def _report_verdict(guest: Guest, name: str, start: int, report_kind: str, cpu: int,
                    visible: bool, why: str, m: dict) -> Result:
    """Exactly `cpu` reported, within the bound, nothing bad besides."""
    label = guest.spec.label()
    reports = since(guest, start, (report_kind,))
    others = sorted({e.cpu for e in reports if e.cpu != cpu}, key=str)
    if report_kind == "soft_lockup" and others:
        # CPUs that wait on a soft-locked CPU (IPIs, stop_machine) are stuck
        # as long as it is and may even be reported first: recorded, not
        # held against the detector. A hard lockup elsewhere always is.
        m["knock_on_cpus"] = others
        others = []
    bad = since(guest, start, BAD_KINDS)
    if bad:
        return Result(name, label, False, "unexpected: " + describe(bad), m)
    if not visible:
        if reports:
            return Result(name, label, False, f"reported although {why}: "
                          + describe(reports), m)
        return Result(name, label, True, f"not reported, as expected: {why}", m)
    if "latency_s" not in m:
        seen = f"; reported instead: cpus {others}" if others else ""
        where = f" on cpu {cpu}" if cpu is not None else ""
        return Result(name, label, False, f"expected a {report_kind} report{where} "
                      f"within {m['bound_s']:.1f} s, got none{seen}", m)
    if others:
        return Result(name, label, False, f"{report_kind} also reported on cpus "
                      f"{others}, only cpu {cpu} was locked", m)
    again = repeated_reports(reports) if report_kind == "hard_lockup" else {}
    if again:
        m["reports_per_cpu"] = again
        return Result(name, label, False, f"one lockup reported {again[cpu]} times on cpu "
                      f"{cpu}: a hard lockup is reported once until it ends", m)
    latency = m["latency_s"]
    if not 0 <= latency <= m["bound_s"]:
        return Result(name, label, False, f"reported {latency:.2f} s after the "
                      f"injection, outside 0..{m['bound_s']:.1f} s", m)
    who = f"cpu {cpu}" if cpu is not None else "the hung task"
    return Result(name, label, True, f"{who} reported after {latency:.2f} s", m)


def repeated_reports(reports: list[Event]) -> dict:
    """CPUs with more than one hard lockup report, and how many, among the
    reports of one lockup: kernel/watchdog.c prints a CPU's hard lockup
    once, and again only after it made progress."""
    counts: dict = {}
    for e in reports:
        counts[e.cpu] = counts.get(e.cpu, 0) + 1
    return {c: n for c, n in counts.items() if n > 1}


def _panic_verdict(guest, name, label, start, visible, why, injected, m) -> Result:
    panic = wait_event(guest, start, "panic", None, 15)
    if not visible:
        if panic is not None or not guest.alive():
            return Result(name, label, False, f"guest panicked although {why}", m)
        return Result(name, label, True, f"no panic, as expected: {why}", m)
    if panic is None:
        return Result(name, label, False, "hardlockup_panic=1 but no panic", m)
    m["panic_latency_s"] = round(panic.time - injected.time, 3)
    if "Hard LOCKUP" not in panic.text:
        return Result(name, label, False, f"panicked for another reason: {panic.title}", m)
    # panic=-1 with -no-reboot: QEMU exits on its own once the panic is done.
    deadline = time.monotonic() + 20 * guest.scale
    while guest.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if guest.alive():
        return Result(name, label, False, "panicked but the guest never went down", m)
    return Result(name, label, True, "Kernel panic - not syncing: Hard LOCKUP", m)


def hard_lockup(guest: Guest, detector: str, cpu: int,
                injector: str = "lockup_inject", expect_cpu: int | None = None) -> Result:
    visible, why = expectations.hard_lockup_visible(detector, guest.spec.cpus,
                                                       guest.console.text, guest.spec)
    bound = expectations.hard_lockup_bound_s(detector, guest.spec.watchdog_thresh)
    name = "hard-lockup-panic" if guest.spec.hardlockup_panic else "hard-lockup"
    if injector != "lockup_inject":
        name += f"[{injector}]"
    return _lockup(guest, cpu, "irqoff", "hard_lockup", bound, visible, why,
                   f"{name}@cpu{cpu}", injector, expect_cpu)


def soft_lockup(guest: Guest, detector: str, cpu: int,
                injector: str = "lockup_inject") -> Result:
    bound = expectations.soft_lockup_bound_s(guest.spec.watchdog_thresh)
    name = "soft-lockup" + (f"[{injector}]" if injector != "lockup_inject" else "")
    return _lockup(guest, cpu, "preemptoff", "soft_lockup", bound, True, "",
                   f"{name}@cpu{cpu}", injector)


# LKDTM crash type -> the kind of report it must cause.
LKDTM_TYPES = {"HARDLOCKUP": "hard_lockup", "SOFTLOCKUP": "soft_lockup",
               "SPINLOCKUP": "soft_lockup", "HUNG_TASK": "hung_task"}
HUNG_TASK_TIMEOUT_S = 4


def lkdtm(guest: Guest, detector: str, cpu: int, crash: str) -> Result:
    """LKDTM lockups never end: check the report, then retire the guest."""
    check_cpu(guest, cpu)
    kind = LKDTM_TYPES[crash]
    name = f"lkdtm-{crash.lower().replace('_', '-')}@cpu{cpu}"
    thresh = guest.spec.watchdog_thresh
    if kind == "hard_lockup":
        visible, why = expectations.hard_lockup_visible(detector, guest.spec.cpus,
                                                       guest.console.text, guest.spec)
        bound = expectations.hard_lockup_bound_s(detector, thresh)
    elif kind == "soft_lockup":
        visible, why, bound = True, "", expectations.soft_lockup_bound_s(thresh)
    else:
        visible, why, bound = True, "", 2.0 * HUNG_TASK_TIMEOUT_S + 2
    try:
        guest.check(f"[ -e {LKDTM_DIRECT} ] || insmod /lib/modules/lkdtm.ko")
        if kind == "hung_task":
            guest.check(f"echo {HUNG_TASK_TIMEOUT_S} > /proc/sys/kernel/hung_task_timeout_secs")
        start = mark(guest)
        # SPINLOCKUP takes a spinlock and returns: the second call spins.
        times = 2 if crash == "SPINLOCKUP" else 1
        trigger = "; ".join([f"echo {crash} > {LKDTM_DIRECT}"] * times)
        guest.send(f"taskset -c {cpu} sh -c '{trigger}' >/dev/null 2>&1 &")
        injected = None
        for _ in range(times):
            after = injected.line if injected else start
            injected = wait_event(guest, after, "lockup_injected", None, 10)
            if injected is None:
                raise guest.failure(f"{name}: LKDTM never said it triggered {crash}")
        m = {"cpu": cpu, "crash": crash, "bound_s": bound, "injected_at": injected.time}
        others = ",".join(str(c) for c in range(guest.spec.cpus) if c != cpu)
        target = None if kind == "hung_task" else cpu   # a hung task has no CPU
        report = wait_event(guest, start, kind, target,
                             bound + 2 if visible else bound + thresh,
                             nudge_cpus=others or None)
        if report is not None:
            m["latency_s"] = round(report.time - injected.time, 3)
        result = _report_verdict(guest, name, start, kind, target, visible, why, m)
    finally:
        guest.stop()    # the lockup never ends: nobody may reuse this guest
    return result
