"""The detector's contract with the rest of the platform: CPUs it must not
touch, suspend and resume, and the other users of HPET channels.

- untouched-cpus: a CPU taken out of watchdog_cpumask, by hand or by
  nohz_full= at boot, takes no NMI at all from the detector.
- unbooted-cpus: on a machine booted with nr_cpus= or maxcpus= below its
  CPU count, no NMI reaches a CPU Linux did not boot (QEMU resets the
  machine then), every online CPU is monitored, lockups are reported, also
  on a CPU brought up later.
- suspend-resume: S3 and QMP system_wakeup; afterwards the detector runs
  again and a lockup on every CPU is reported.
- hpet-users: /dev/hpet and the RTC emulated on an HPET channel work beside
  the detector, and /dev/hpet never hands out the detector's channel.
- kdump: hardlockup_panic=1 boots the loaded crash kernel, which sees no
  stray NMI from the first kernel's HPET channel.
- irte-retarget: with the HPET behind the IOMMU, the channel's IRTE follows
  the handling CPU when it leaves watchdog_cpumask or goes offline.

Each scenario acts and records; harness.verdicts (suspend-resume:
harness.disturbance_verdicts) judges what was recorded.
"""
import dataclasses
import re
import time

from harness import detectors, expectations, irte, verdicts
from harness.contract_scenarios import (came_back, check_tsc_stable, expiries, handling_cpu,
                                        judge_disturbed, watch)
from harness.detector_scenarios import HLD_DEBUGFS, cpulist, many_locked, observe
from harness.detector_verdicts import REMAP_ON, ManyLocked
from harness.errors import HarnessError
from harness.qemu import Guest
from harness.scenarios import (BAD_KINDS, LOCKUP_KINDS, Result, hard_lockup, inject_command, mark,
                               since)


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
    if not detectors.get(detector).debugfs:
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
    it must take no NMI at all, while the others take the detector's. On a
    machine booted with nohz_full=, the kernel has taken those CPUs out
    of the mask itself: they are the ones watched, and the mask must say so."""
    name, label = "untouched-cpus", guest.spec.label()
    n, thresh = guest.spec.cpus, guest.spec.watchdog_thresh
    if n < 2:
        raise HarnessError("untouched-cpus needs at least 2 CPUs")
    nohz = sorted(set().union(*(cpulist(a.split("=", 1)[1]) for a in guest.spec.cmdline_extra
                                if a.startswith("nohz_full="))))
    excluded = nohz or [n - 1]
    keep = [c for c in range(n) if c not in excluded]
    if not keep or not set(excluded) <= set(range(n)):
        raise HarnessError(f"{label}: nohz_full={nohz} must leave one of cpus 0-{n - 1}")
    mask = sorted(cpulist(guest.check("cat /proc/sys/kernel/watchdog_cpumask")))
    if not nohz:
        guest.check(f"echo {','.join(map(str, keep))} > /proc/sys/kernel/watchdog_cpumask")
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
        if not nohz:
            guest.check(f"echo 0-{n - 1} > /proc/sys/kernel/watchdog_cpumask")
    rate = expectations.nmi_rate(detector, thresh)
    v = verdicts.untouched(verdicts.nmi_counts(before), verdicts.nmi_counts(after),
                           excluded, keep, elapsed, rate, bad,
                           boot_mask=mask if nohz else None)
    return Result(name, label, v.passed, v.reason,
                  {**v.measurements, "rate": rate, "interrupts_before": before,
                   "interrupts_after": after, "nohz_full": nohz, "boot_mask": mask})


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
    mon = sorted(_monitored(guest)) if detectors.get(detector).debugfs else None
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
    boots = guest.console.text.count(verdicts.BOOT_LINE)
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
    guest.qmp.cmd("system_wakeup")
    if not guest.console.wait_until(lambda: "PM: suspend exit" in guest.console.text[offset:],
                                    time.monotonic() + 60 * guest.scale, guest.alive):
        raise guest.failure("no 'PM: suspend exit' after system_wakeup")
    guest.check("true", timeout=60)          # the agent answers again
    m: dict = {}
    obs = watch(guest, start, ["suspended", "woke up"], expiries(guest), extra=m)
    if came_back(guest, obs):
        r = many_locked(guest, detector, list(range(guest.spec.cpus)))
        obs = dataclasses.replace(obs, then_many=ManyLocked.from_dict(
            r.measurements["observation"]))
    return judge_disturbed(name, guest, detector, obs, **m)


HPET_USER_IRQS = 64


def hpet_users(guest: Guest, detector: str) -> Result:
    """guest/tools/hpet-user takes every channel /dev/hpet hands out, waits
    for interrupts on one, and for two updates of the emulated RTC; the
    detector's channel must not be among them, and it goes on meanwhile."""
    name, label = "hpet-users", guest.spec.label()
    channel = None
    if detectors.get(detector).debugfs:
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


def _irte_step(guest: Guest, detector: str, step: str,
               away: int | None) -> verdicts.IrteStep:
    """Where the HPET channel's NMI goes now: once the detector no longer
    names `away` as its handling CPU (or 10 s passed: the verdict then
    says so), the IOMMU's table and the expiries over up to 2 x thresh."""
    seen: list[int] = []

    def moved() -> bool:
        seen.append(handling_cpu(guest, detector))
        return seen[-1] != away
    guest.console.wait_until(moved, time.monotonic() + 10 * guest.scale, guest.alive)
    before = expiries(guest)
    table = guest.check(f"cat {irte.PATH}")
    cpuinfo = guest.check("grep -E '^(processor|apicid)' /proc/cpuinfo")
    after: list[int | None] = [before]

    def counted() -> bool:
        after[0] = expiries(guest)
        return None not in (before, after[0]) and after[0] > before
    guest.console.wait_until(counted, time.monotonic()
                             + 2 * guest.spec.watchdog_thresh * guest.scale, guest.alive)
    return verdicts.IrteStep(step, away, seen[-1], cpuinfo, table, (before, after[0]))


def irte_retarget(guest: Guest, detector: str) -> Result:
    """With the HPET behind the IOMMU, the channel's NMI is an IRTE, which
    the detector moves from process context when its handling CPU leaves
    watchdog_cpumask or goes offline: after each such change the IRTE is
    aimed at the new handling CPU's APIC ID and the expiries arrive."""
    name, label, spec = "irte-retarget", guest.spec.label(), guest.spec
    if not detectors.get(detector).hpet_channel or spec.iommu_mode != "described":
        raise HarnessError("irte-retarget needs the HPET detector behind the IOMMU "
                           "(--detector hpet --iommu described)")
    n = spec.cpus
    if n < 3:
        raise HarnessError("irte-retarget needs at least 3 CPUs")
    start = mark(guest)
    steps = [_irte_step(guest, detector, "booted", None)]
    first = steps[0].handling_cpu
    try:
        guest.check("echo " + ",".join(str(c) for c in range(n) if c != first)
                    + " > /proc/sys/kernel/watchdog_cpumask")
        steps.append(_irte_step(guest, detector, f"cpu {first} out of watchdog_cpumask", first))
        second = steps[-1].handling_cpu
        if second != 0:             # x86 cannot offline CPU 0
            guest.check(f"echo 0 > /sys/devices/system/cpu/cpu{second}/online", timeout=60)
            steps.append(_irte_step(guest, detector, f"cpu {second} offline", second))
    finally:
        for cpu in range(1, n):
            guest.run(f"echo 1 > /sys/devices/system/cpu/cpu{cpu}/online", timeout=60)
        guest.check(f"echo 0-{n - 1} > /proc/sys/kernel/watchdog_cpumask")
    steps.append(_irte_step(guest, detector, "every cpu back", None))
    check_tsc_stable(guest, start)
    bad = since(guest, start, LOCKUP_KINDS + BAD_KINDS)
    text = guest.console.text
    remap = re.search(REMAP_ON, text)
    v = verdicts.irte_follows(steps, bool(remap) and remap.group(1) == "x2apic",
                              verdicts.apic_routing(text), bad)
    return Result(name, label, v.passed, v.reason,
                  {**v.measurements, "tables": [s.table for s in steps],
                   "cpuinfo": [s.cpuinfo for s in steps]})


def _crash_cmdline(cmdline: str) -> str:
    """The crash kernel's command line: this kernel's without the crash
    reservation, the panic setting and the CPU limits, plus what kdump
    kernels take (one CPU, interrupts polled, devices reset)."""
    drop = ("crashkernel=", "sysctl.kernel.hardlockup_panic=", "nr_cpus=", "maxcpus=")
    kept = [a for a in cmdline.split() if not a.startswith(drop)]
    return " ".join(kept + ["nr_cpus=1", "irqpoll", "reset_devices"])


def kdump(guest: Guest, detector: str) -> Result:
    """On a machine with a crash kernel reservation (crash_kernel_mb): load
    the crash kernel, set hardlockup_panic=1 and lock up the last CPU: the
    report panics, the crash kernel boots, reaches userspace with a
    /proc/vmcore, sees no stray NMI (the first kernel's HPET channel) and,
    asked for nmi_watchdog=hpet, runs the detector again. The guest is
    retired."""
    name, label, spec = "kdump", guest.spec.label(), guest.spec
    if not spec.crash_kernel_mb:
        raise HarnessError(f"{label}: kdump needs a crash kernel reservation "
                           "(crash_kernel = <MiB> in the matrix, --crash-kernel)")
    try:
        cmdline = _crash_cmdline(guest.check("cat /proc/cmdline"))
        loaded = guest.run(f"kdump-load '{cmdline}'", timeout=60)
        if loaded.status != 0 or guest.check("cat /sys/kernel/kexec_crash_loaded").strip() != "1":
            return Result(name, label, False, f"no crash kernel loaded: {loaded.output.strip()}",
                          {"cmdline": cmdline})
        guest.check("echo 1 > /proc/sys/kernel/hardlockup_panic")
        cpu = spec.cpus - 1
        thresh = spec.watchdog_thresh
        offset = len(guest.console.text)
        guest.send(inject_command("lockup_inject", "irqoff", cpu, 10 * thresh * 1000))
        # No wait for the panic line: printed in NMI context, it is in the
        # dump, not on the console. The report, the panic and the crash
        # kernel's boot to its agent, all within one deadline.
        bound = expectations.hard_lockup_bound_s(detector, thresh)
        ready = guest.console.wait_until(
            lambda: verdicts.AGENT_READY in guest.console.text[offset:].partition(
                verdicts.BOOT_LINE)[2], time.monotonic() + (bound + 90) * guest.scale,
            guest.alive)
        dump = None
        if ready:
            guest.agent.wait_ready(time.monotonic() + 30 * guest.scale)
            found = guest.run(f"vmcore-find /proc/vmcore '{verdicts.DUMP_REPORT}' "
                              f"'{verdicts.DUMP_PANIC}'", timeout=120)
            dump = found.output.splitlines() if found.status == 0 else None
            observe(guest, 3.0 * thresh, LOCKUP_KINDS + BAD_KINDS)
        guest.console.refresh()
        v = verdicts.kdump(guest.console.text[offset:], cpu, dump,
                           detectors.get(detector).hpet_channel
                           and "nmi_watchdog=hpet" in cmdline.split(),
                           BAD_KINDS + LOCKUP_KINDS)
        return Result(name, label, v.passed, v.reason, {**v.measurements, "cpu": cpu,
                                                         "cmdline": cmdline})
    finally:
        guest.stop()     # it runs the crash kernel now, or must not be trusted
