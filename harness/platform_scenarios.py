"""The detector's contract with the rest of the platform: CPUs it must not
touch, suspend and resume, and the other users of HPET channels.

- untouched-cpus: a CPU taken out of watchdog_cpumask (as nohz_full CPUs
  are by default) takes no NMI at all from the detector.
- unbooted-cpus: on a machine booted with nr_cpus= or maxcpus= below its
  CPU count, no NMI reaches a CPU Linux did not boot (QEMU resets the
  machine then), every online CPU is monitored, lockups are reported, also
  on a CPU brought up later.
- suspend-resume: S3 and QMP system_wakeup; afterwards the detector runs
  again and a lockup on every CPU is reported.
- hpet-users: /dev/hpet and the RTC emulated on an HPET channel work beside
  the detector, and /dev/hpet never hands out the detector's channel.

Each scenario acts and records; harness.verdicts judges what was recorded.
"""
import time

from harness import expectations, verdicts
from harness.contract_scenarios import came_back, check_tsc_stable, expiries, handling_cpu
from harness.detector_scenarios import HLD_DEBUGFS, cpulist, many_locked, observe
from harness.errors import HarnessError
from harness.qemu import Guest
from harness.scenarios import BAD_KINDS, LOCKUP_KINDS, Result, hard_lockup, mark, since


def _nmi_rows(guest: Guest) -> str:
    """The header and NMI rows of /proc/interrupts: what nmi_counts reads,
    kept whole in the case's measurements (tests/test_verdicts.py)."""
    return guest.check("grep -E '^ +CPU0|^ *NMI:' /proc/interrupts")


def _monitored(guest: Guest) -> set[int]:
    """The CPUs the HPET detector monitors, from its debugfs."""
    return cpulist(guest.check(f"cat {HLD_DEBUGFS}/monitored_cpus"))


def _wait_monitored(guest: Guest, detector: str, want: set[int]) -> None:
    """Until the HPET detector monitors exactly `want` (it says so in
    debugfs once reconfigured); other detectors have no such marker."""
    if detector != "hpet":
        return
    seen: list[set[int]] = []

    def done() -> bool:
        seen.append(_monitored(guest))
        return seen[-1] == want
    if not guest.console.wait_until(done, time.monotonic() + 10 * guest.scale, guest.alive):
        raise guest.failure(f"the HPET detector monitors cpus "
                            f"{sorted(seen[-1]) if seen else '?'}, not {sorted(want)}")


def untouched_cpus(guest: Guest, detector: str) -> Result:
    """Take the last CPU out of watchdog_cpumask: over 3 x watchdog_thresh
    it must take no NMI at all, while the others take the detector's."""
    name, label = "untouched-cpus", guest.spec.label()
    n, thresh = guest.spec.cpus, guest.spec.watchdog_thresh
    if n < 2:
        raise HarnessError("untouched-cpus needs at least 2 CPUs")
    excluded, keep = [n - 1], list(range(n - 1))
    guest.check(f"echo 0-{n - 2} > /proc/sys/kernel/watchdog_cpumask")
    try:
        _wait_monitored(guest, detector, set(keep))
        start = mark(guest)
        before = _nmi_rows(guest)
        window = 3.0 * thresh
        t0 = time.monotonic()
        bad = observe(guest, window, LOCKUP_KINDS + BAD_KINDS)
        after = _nmi_rows(guest)
        elapsed = time.monotonic() - t0
        check_tsc_stable(guest, start)
    finally:
        guest.check(f"echo 0-{n - 1} > /proc/sys/kernel/watchdog_cpumask")
    rate = expectations.hpet_nmi_rate(thresh) if detector == "hpet" else 0.0
    v = verdicts.untouched(verdicts.nmi_counts(before), verdicts.nmi_counts(after),
                           excluded, keep, elapsed, rate, bad)
    return Result(name, label, v.passed, v.reason,
                  {**v.measurements, "rate": rate, "interrupts_before": before,
                   "interrupts_after": after})


def unbooted_cpus(guest: Guest, detector: str) -> Result:
    """Run on a machine whose command line has nr_cpus= or maxcpus= below
    its CPU count. With maxcpus=, a CPU that was not booted is brought up
    afterwards and must be monitored and reported like the others."""
    name, label = "unbooted-cpus", guest.spec.label()
    hw = guest.spec.cpus
    limit = [a for a in guest.spec.cmdline_extra if a.split("=")[0] in ("nr_cpus", "maxcpus")]
    online = sorted(cpulist(guest.check("cat /sys/devices/system/cpu/online")))
    if not limit or len(online) >= hw:
        raise HarnessError(f"{label}: unbooted-cpus needs nr_cpus= or maxcpus= below the "
                           f"machine's {hw} CPUs on its command line")

    start = mark(guest)
    bad = observe(guest, 3.0 * guest.spec.watchdog_thresh, LOCKUP_KINDS + BAD_KINDS)
    mon = sorted(_monitored(guest)) if detector == "hpet" else None
    lockups: dict[int, tuple[bool, str]] = {}
    h = handling_cpu(guest, detector)
    target = next((c for c in reversed(online) if c != h), h)
    r = hard_lockup(guest, detector, target)
    lockups[target] = (r.passed, r.reason)
    present = sorted(cpulist(guest.check("cat /sys/devices/system/cpu/present")))
    late = [c for c in present if c not in online]
    if late:
        cpu = late[0]
        guest.check(f"echo 1 > /sys/devices/system/cpu/cpu{cpu}/online", timeout=60)
        _wait_monitored(guest, detector, set(online) | {cpu})
        r = hard_lockup(guest, detector, cpu)
        lockups[cpu] = (r.passed, r.reason)
    check_tsc_stable(guest, start)
    boots = guest.console.text.count("Linux version ")
    v = verdicts.unbooted(hw, online, mon, boots, bad, lockups)
    return Result(name, label, v.passed, v.reason, {**v.measurements, "brought_up": late[:1]})


def suspend_resume(guest: Guest, detector: str) -> Result:
    """Suspend to RAM, wake the machine by QMP: the detector must run again
    (its expiries come back) and a lockup on every CPU is reported."""
    name, label = "suspend-resume", guest.spec.label()
    states = guest.check("cat /sys/power/state").split()
    if "mem" not in states:
        raise HarnessError(f"{label}: the guest cannot suspend to RAM "
                           f"(/sys/power/state: {' '.join(states)})")
    start = mark(guest)
    offset = len(guest.console.text)
    guest.send("echo mem > /sys/power/state")
    deadline = time.monotonic() + 30 * guest.scale
    if not guest.console.wait_until(
            lambda: guest.qmp.cmd("query-status").get("status") == "suspended",
            deadline, guest.alive):
        raise guest.failure("the guest did not suspend (QMP status never 'suspended')")
    steps = ["suspended"]
    guest.qmp.cmd("system_wakeup")
    if not guest.console.wait_until(lambda: "PM: suspend exit" in guest.console.text[offset:],
                                    time.monotonic() + 60 * guest.scale, guest.alive):
        raise guest.failure("no 'PM: suspend exit' after system_wakeup")
    guest.check("true", timeout=60)          # the agent answers again
    steps.append("woke up")
    m: dict = {}
    failed = came_back(guest, name, m, steps, start, expiries(guest))
    if failed:
        return failed
    r = many_locked(guest, detector, list(range(guest.spec.cpus)))
    steps.append(r.reason)
    m["lockups"] = r.measurements
    return Result(name, label, r.passed, "; ".join(steps), m)


HPET_USER_IRQS = 64


def hpet_users(guest: Guest, detector: str) -> Result:
    """guest/tools/hpet-user takes every channel /dev/hpet hands out, waits
    for interrupts on one, and for two updates of the emulated RTC; the
    detector's channel must not be among them, and it goes on meanwhile."""
    name, label = "hpet-users", guest.spec.label()
    channel = None
    if detector == "hpet":
        text = guest.run(f"cat {HLD_DEBUGFS}/channel").output.strip()
        channel = int(text) if text.isdigit() else None
    before = expiries(guest)
    start = mark(guest)
    t0 = time.monotonic()
    reply = guest.run(f"hpet-user {HPET_USER_IRQS}", timeout=30)
    elapsed = time.monotonic() - t0
    after = expiries(guest)
    check_tsc_stable(guest, start)
    bad = since(guest, start, LOCKUP_KINDS + BAD_KINDS)
    taken = None if before is None or after is None else after - before
    want = elapsed * expectations.hpet_nmi_rate(guest.spec.watchdog_thresh) / 2
    v = verdicts.hpet_users(reply.output, channel, HPET_USER_IRQS, taken, want, bad)
    return Result(name, label, v.passed, v.reason,
                  {**v.measurements, "status": reply.status, "irqs_wanted": HPET_USER_IRQS,
                   "expiries_wanted": round(want, 1)})
