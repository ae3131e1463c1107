"""Lockup scenarios: act on a live guest and record what happened; the
verdicts are harness.lockup_verdicts, pure functions of that record.

Each scenario returns a Result with a verdict, the reason for it, and the
measurements (detection latency from kernel timestamps) for the report;
the measurements keep the observation judged ("observation"), which
tests/logs/capture.py keeps with the console window as a regression test.
"""
import dataclasses
import time
from dataclasses import dataclass, field

from harness import detectors, lockup_verdicts as lv, verdicts
from harness.console_events import Event, EventKind
from harness.detector_verdicts import cpulist
from harness.errors import HarnessError
from harness.lockup_verdicts import BAD_KINDS, HUNG_TASK_TIMEOUT_S, LOCKUP_KINDS
from harness.qemu import Guest

INJECT = "/sys/kernel/debug/lockup_inject/inject"


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


def judged(name: str, guest: Guest, v: verdicts.Verdict, obs: lv.Observation,
           **extra) -> Result:
    """A Result of verdict `v` on observation `obs`, which its measurements
    keep ("observation") with `extra` ones of the scenario."""
    return Result(name, guest.spec.label(), v.passed, v.reason,
                  {**extra, **v.measurements, "observation": obs.to_dict()})


def events_upto(guest: Guest, start: int, end: int) -> list[Event]:
    """The console's events after line `start`, up to line `end`."""
    return lv.window(guest.console.events(), start, end)


def since(guest: Guest, line: int, kinds=None) -> list[Event]:
    return [e for e in guest.console.events()
            if e.line > line and (kinds is None or e.kind in kinds)]


def mark(guest: Guest) -> int:
    """The console position (last line number) before an action."""
    guest.console.refresh()
    return guest.console.text.count("\n")


def check_cpu(guest: Guest, cpu: int) -> None:
    if not 0 <= cpu < guest.spec.cpus:
        raise HarnessError(f"cpu {cpu} is outside the guest (cpus 0-{guest.spec.cpus - 1})")


def boot(guest: Guest, detector: str) -> Result:
    """The guest booted clean and the hardlockup detector is on."""
    obs = lv.Boot(end=mark(guest),
                  nmi_watchdog=guest.check("cat /proc/sys/kernel/nmi_watchdog").strip(),
                  online=guest.check("cat /sys/devices/system/cpu/online").strip())
    text = "\n".join(guest.console.text.split("\n")[:obs.end])
    v = lv.boot(obs, events_upto(guest, 0, obs.end), text, guest.spec,
                detectors.get(detector))
    return judged("boot", guest, v, obs,
                  boot_seconds=round(getattr(guest, "boot_seconds", 0.0), 2),
                  settle_seconds=round(getattr(guest, "settle_seconds", 0.0), 2))


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


def soak(guest: Guest, detector: str, seconds: float) -> Result:
    """Keep the guest idle for `seconds` and count every lockup report,
    unknown NMI, RCU stall or other bad event: each is a false positive.
    Unlike idle, it does not stop at the first one: the count is the result.

    A quiet soak only means something if the detector was armed all along,
    so the HPET detector's NMIs must have kept coming on every CPU, and a
    real hard lockup at the end (the canary) must still be reported."""
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
    end = mark(guest)
    det = detectors.get(detector)
    # Reports from before the window (a boot starved by an overcommitted
    # host) are not the idle detector's doing, but are kept for the record.
    early = lv.of_kinds(events_upto(guest, 0, start), LOCKUP_KINDS + BAD_KINDS)
    obs = lv.Soak(start, end, seconds, before, after, round(t1 - t0, 3),
                  lv.said_off(det, guest.console.text), lv.count_kinds(early))
    # The canary is only worth its time if the window was clean.
    if lv.soak_window(obs, events_upto(guest, start, end), guest.spec, det).passed:
        obs = dataclasses.replace(obs, canary=observe_lockup(
            guest, detector, guest.spec.cpus - 1, "irqoff", EventKind.HARD_LOCKUP))
    v = lv.soak(obs, events_upto(guest, start, mark(guest)), guest.spec, det)
    return judged("soak", guest, v, obs)


def idle(guest: Guest, periods: int = 3) -> Result:
    """Watch an idle guest for periods x watchdog_thresh: nothing may fire."""
    start = mark(guest)
    window = periods * max(guest.spec.watchdog_thresh, 1)
    # Observation window, not a wait for something: any event ends it early.
    guest.console.wait_until(lambda: bool(since(guest, start, LOCKUP_KINDS + BAD_KINDS)),
                             time.monotonic() + window, guest.alive)
    guest.check("true")   # the guest still answers
    obs = lv.Idle(start, mark(guest), window)
    return judged("idle", guest, lv.idle(obs, events_upto(guest, start, obs.end)), obs)


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


def observe_lockup(guest: Guest, detector: str, cpu: int, mode: str, kind: str,
                   injector: str = "lockup_inject", expect_cpu: int | None = None,
                   name: str = "lockup") -> lv.Lockup:
    """Lock up `cpu` and watch for the report (held past the latest one the
    verdict accepts); the record. expect_cpu is only for the canary case,
    which expects the report on a CPU that was not locked."""
    check_cpu(guest, cpu)
    expect = cpu if expect_cpu is None else expect_cpu
    spec, det = guest.spec, detectors.get(detector)
    thresh = spec.watchdog_thresh
    off = lv.said_off(det, guest.console.text)
    bound = lv.bound_s(kind, det, thresh)
    visible, _ = lv.visible(kind, det, spec, off)
    hold_ms = lv.hold_ms(bound, thresh)
    start = mark(guest)
    guest.send(inject_command(injector, mode, cpu, hold_ms))
    injected = wait_event(guest, start, "lockup_injected", cpu, 10)
    if injected is None:
        raise guest.failure(f"{name}: no injection marker for cpu {cpu}")
    # Wait for the report, or (when none is expected) for the lockup to end.
    report = wait_event(guest, start, kind, expect, bound + 2) if visible else None
    delayed = False
    if spec.hardlockup_panic and kind == EventKind.HARD_LOCKUP:
        panic = wait_event(guest, start, "panic", None, 15)
        if panic is not None and visible:
            # panic=-1 with -no-reboot: QEMU exits on its own once the panic is done.
            deadline = time.monotonic() + 20 * guest.scale
            while guest.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
    else:
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
            delayed = wait_event(guest, start, kind, expect, 5) is not None
    return lv.Lockup(start=start, end=mark(guest), kind=kind, cpu=cpu, expect=expect,
                     injected_at=injected.time, thresh=thresh, off_message=off,
                     console_delayed=delayed, alive=guest.alive())


def _lockup(guest: Guest, detector: str, cpu: int, mode: str, kind: str, name: str,
            injector: str, expect_cpu: int | None = None) -> Result:
    obs = observe_lockup(guest, detector, cpu, mode, kind, injector, expect_cpu, name)
    v = lv.lockup(obs, events_upto(guest, obs.start, obs.end), guest.spec,
                  detectors.get(detector))
    return judged(name, guest, v, obs, cpu=cpu, mode=mode, injector=injector,
                  hold_ms=lv.hold_ms(v.measurements["bound_s"], obs.thresh))


def hard_lockup(guest: Guest, detector: str, cpu: int,
                injector: str = "lockup_inject", expect_cpu: int | None = None) -> Result:
    name = "hard-lockup-panic" if guest.spec.hardlockup_panic else "hard-lockup"
    if injector != "lockup_inject":
        name += f"[{injector}]"
    return _lockup(guest, detector, cpu, "irqoff", EventKind.HARD_LOCKUP, f"{name}@cpu{cpu}",
                   injector, expect_cpu)


def soft_lockup(guest: Guest, detector: str, cpu: int,
                injector: str = "lockup_inject") -> Result:
    name = "soft-lockup" + (f"[{injector}]" if injector != "lockup_inject" else "")
    return _lockup(guest, detector, cpu, "preemptoff", EventKind.SOFT_LOCKUP,
                   f"{name}@cpu{cpu}", injector)


# LKDTM crash type -> the kind of report it must cause.
LKDTM_TYPES = {"HARDLOCKUP": "hard_lockup", "SOFTLOCKUP": "soft_lockup",
               "SPINLOCKUP": "soft_lockup", "HUNG_TASK": "hung_task"}


AGENT_TTY = "ttyS1"       # the agent's serial port (guest/init)


def steer_agent_irq(guest: Guest, away_from: int) -> None:
    """Move the interrupt of the agent's serial port off `away_from`, a CPU
    about to lock up for good: an agent whose input interrupt goes to it
    hears nothing more, so no console nudge could flush a report printed
    there in NMI context (8 vCPUs with the IOMMU put it on CPU 5)."""
    others = ",".join(str(c) for c in range(guest.spec.cpus) if c != away_from)
    if not others:
        return
    got = guest.check(f"d=$(dirname $(ls -d /proc/irq/*/{AGENT_TTY} | head -1)); "
                      f"echo {others} > $d/smp_affinity_list && "
                      "cat $d/effective_affinity_list").strip()
    if away_from in cpulist(got):
        raise guest.failure(f"the agent's interrupt stays on cpu {got}, which is about "
                            f"to lock up")


def lkdtm(guest: Guest, detector: str, cpu: int, crash: str) -> Result:
    """LKDTM lockups never end: check the report, then retire the guest."""
    check_cpu(guest, cpu)
    kind = LKDTM_TYPES[crash]
    name = f"lkdtm-{crash.lower().replace('_', '-')}@cpu{cpu}"
    det = detectors.get(detector)
    thresh = guest.spec.watchdog_thresh
    off = lv.said_off(det, guest.console.text)
    visible, _ = lv.visible(kind, det, guest.spec, off)
    bound = lv.bound_s(kind, det, thresh)
    try:
        guest.check(f"[ -e {LKDTM_DIRECT} ] || insmod /lib/modules/lkdtm.ko")
        if kind == "hung_task":
            guest.check(f"echo {HUNG_TASK_TIMEOUT_S} > /proc/sys/kernel/hung_task_timeout_secs")
        else:
            steer_agent_irq(guest, cpu)
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
        others = ",".join(str(c) for c in range(guest.spec.cpus) if c != cpu)
        target = None if kind == "hung_task" else cpu   # a hung task has no CPU
        wait_event(guest, start, kind, target, bound + 2 if visible else bound + thresh,
                   nudge_cpus=others or None)
        obs = lv.Lockup(start=start, end=mark(guest), kind=kind, cpu=cpu, expect=target,
                        injected_at=injected.time, thresh=thresh, off_message=off,
                        alive=guest.alive())
        v = lv.lockup(obs, events_upto(guest, start, obs.end), guest.spec, det)
        result = judged(name, guest, v, obs, cpu=cpu, crash=crash)
    finally:
        guest.stop()    # the lockup never ends: nobody may reuse this guest
    return result
