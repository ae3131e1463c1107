"""The other side of the detector's contract: what must not happen.

- boundary-sweep: interrupts-off sections shorter than watchdog_thresh, at
  random phases, on the CPU that handles the HPET NMI and on another: a
  hard lockup is more than watchdog_thresh without interrupts, so none of
  them may be reported. Longer ones are measured, not judged.
- unknown-nmi: NMIs that nobody claims, sent to every CPU at random moments
  by the injection module and by QMP inject-nmi: each one must reach the
  kernel's unknown NMI path, one for one. The detector must not take them.
- unknown-nmi-panic: with kernel.unknown_nmi_panic=1 such an NMI on the CPU
  that handles the HPET NMI panics the machine.
- machine-stalls: the machine frozen again and again while its clocks run
  on (SMIs; a starved VM): late expiries are no unknown NMIs, no report.

The injections here are quiet: nothing is printed on a locked CPU, as that
would touch its watchdog (see guest/modules/lockup_inject). Each scenario
acts and records; harness.verdicts and harness.disturbance_verdicts judge
what was recorded.
"""
import dataclasses
import os
import random
import re
import secrets
import signal
import time

from harness import detectors, expectations, inject_log, verdicts
from harness import disturbance_verdicts as dvd
from harness.errors import HarnessError
from harness.detector_scenarios import HLD_DEBUGFS
from harness.qemu import Guest
from harness.lockup_verdicts import Lockup
from harness.scenarios import (BAD_KINDS, LOCKUP_KINDS, Result, events_upto, hard_lockup,
                               judged, mark, since, wait_event)

INJECT_DIR = "/sys/kernel/debug/lockup_inject"
# In units of watchdog_thresh: below the hard lockup definition, and beyond.
SWEEP_FRACTIONS = (0.2, 0.4, 0.6, 0.8, 0.95, 1.2, 1.5)
SWEEP_PER_LENGTH = 10
# arch/x86/kernel/nmi.c prints "Uhhuh" with pr_emerg_ratelimited(): at most
# 10 lines per 5 s. NMIs are spaced so that none is suppressed.
NMI_SPACING_S = 0.6
SUPPRESSED = re.compile(r"unknown_nmi_error: \d+ callbacks suppressed")
# kernel/time/clocksource.c. Under TCG the guest's TSC (the host's) and
# HPET (QEMU's virtual clock) drift apart by hundreds of ppm at times; the
# clocksource watchdog may then mark the TSC unstable, and the HPET detector
# disables itself, as it must. That is the emulator, not a verdict.
TSC_UNSTABLE = re.compile(r"clocksource: .*Marking clocksource 'tsc' as unstable.*|"
                          r"tsc: Marking TSC unstable.*")
# NMIs sent to the CPU that handles the HPET NMI: more than to the others,
# as that is where the detector claims by time.
HANDLING_CPU_NMIS = 8


def _seed() -> int:
    return int.from_bytes(os.urandom(4), "little")


def _log_text(guest: Guest) -> str:
    return guest.check(f"cat {INJECT_DIR}/log")


def _records(guest: Guest) -> list:
    return inject_log.parse(_log_text(guest))


def _log_lines_after(text: str, seq: int) -> list[str]:
    """The module's own log lines of a case, kept in its measurements: with
    the case's console they are all its verdict needs (tests/test_verdicts)."""
    keep = {r.seq for r in inject_log.after(inject_log.parse(text), seq)}
    return [line for line in text.splitlines() if int(line.split()[1]) in keep]


def _last_seq(guest: Guest) -> int:
    records = _records(guest)
    return records[-1].seq if records else -1


def _flush_console(guest: Guest) -> None:
    """Print a marker from process context and wait for it on the console.
    Reports stored from NMI context on a CPU that was locked reach the
    console in order, so they are all there once the marker is."""
    token = f"harness: flush {secrets.token_hex(4)}"
    offset = len(guest.console.text)
    guest.check(f"echo '{token}' > /dev/kmsg")
    if not guest.console.wait_until(lambda: token in guest.console.text[offset:],
                                    time.monotonic() + 10 * guest.scale, guest.alive):
        raise guest.failure(f"console flush marker never showed: {token}")


def check_tsc_stable(guest: Guest, start: int) -> None:
    """Raise (an error, retried on a fresh guest) if the TSC was marked
    unstable since console line `start`."""
    text = "\n".join(guest.console.text.splitlines()[start:])
    found = TSC_UNSTABLE.search(text)
    if found:
        raise guest.failure("the emulator's TSC and HPET drifted apart and the kernel "
                            f"marked the TSC unstable ({found.group(0).strip()}): "
                            "the HPET detector disabled itself, as designed; no verdict")


def handling_cpu(guest: Guest, detector: str) -> int:
    """The CPU the HPET NMI goes to; for other detectors, the boot CPU."""
    debugfs = detectors.get(detector).debugfs
    if not debugfs or guest.run(f"test -e {debugfs}/handling_cpu").status:
        return 0
    text = guest.check(f"cat {debugfs}/handling_cpu").strip()
    if not text.isdigit():
        raise guest.failure(f"the HPET detector handles no CPU: {text!r}")
    return int(text)


def sweep_targets(guest: Guest, detector: str) -> list[int]:
    """The handling CPU and the one farthest from it: for the buddy
    detector, neither watches the other."""
    n = guest.spec.cpus
    h = handling_cpu(guest, detector) if n > 1 else 0
    return sorted({h, (h + n // 2) % n})


def sweep_plan(thresh: int, per_length: int, rng: random.Random) -> list[tuple[int, int]]:
    """(ms, gap after it in µs) for every section, lengths shuffled; gaps
    random over half a watchdog_thresh, longer than the hrtimer period (2/5)
    and the HPET detector's (1/5), so that sections fall at random phases
    of both."""
    if per_length < 1:
        raise HarnessError(f"sections per length must be at least 1, not {per_length}")
    if thresh < 1:
        raise HarnessError("a boundary sweep needs watchdog_thresh >= 1")
    lengths = [round(f * thresh * 1000) for f in SWEEP_FRACTIONS for _ in range(per_length)]
    rng.shuffle(lengths)
    return [(ms, rng.randrange(100_000, 100_000 + thresh * 500_000)) for ms in lengths]


def boundary_sweep(guest: Guest, detector: str, per_length: int = SWEEP_PER_LENGTH) -> Result:
    name, label = "boundary-sweep", guest.spec.label()
    thresh = guest.spec.watchdog_thresh
    seed = _seed()
    plan = sweep_plan(thresh, per_length, random.Random(seed))
    targets = sweep_targets(guest, detector)
    cpus = ",".join(map(str, targets))
    seq0 = _last_seq(guest)
    start = mark(guest)
    steps = " ".join(f"{ms}:{gap}" for ms, gap in plan)
    script = (f"I={INJECT_DIR}; for x in {steps}; do "
              f"echo \"irqoff {cpus} ${{x%:*}} quiet\" > $I/inject || exit 1; "
              "while [ \"$(cat $I/active)\" != 0 ]; do usleep 20000; done; "
              "usleep ${x#*:}; done")
    budget = sum(ms / 1000 + gap / 1e6 + 0.5 for ms, gap in plan) + 30
    t0 = time.monotonic()
    guest.check(script, timeout=budget)
    _flush_console(guest)
    check_tsc_stable(guest, start)
    log = _log_text(guest)
    sections = [r for r in inject_log.after(inject_log.parse(log), seq0)
                if isinstance(r, inject_log.Lockup)]
    reports = since(guest, start, ("hard_lockup",))
    bad = since(guest, start, tuple(k for k in LOCKUP_KINDS + BAD_KINDS
                                     if k != "hard_lockup"))
    v = verdicts.sweep(sections, reports, bad, detector, thresh)
    m = {**v.measurements, "targets": targets, "seed": seed, "per_length": per_length,
         "wall_s": round(time.monotonic() - t0, 1), "inject_log": _log_lines_after(log, seq0)}
    return Result(name, label, v.passed, v.reason, m)


def _nmi_script(order: list[int], rng: random.Random, thresh: int) -> str:
    gaps = [round((NMI_SPACING_S + rng.random() * thresh / 5) * 1e6) for _ in order]
    return "; ".join(f"usleep {g}; echo 'nmi {c} 1' > {INJECT_DIR}/inject"
                     for c, g in zip(order, gaps))


def unknown_nmis(guest: Guest, detector: str, per_cpu: int = 3, qmp: int = 3) -> Result:
    """NMIs from the injection module to every CPU, and QMP inject-nmi
    (LINT1 of the boot CPU), at random moments: each must be reported as
    an unknown NMI on the CPU it went to. The HPET detector's one known
    loss is allowed for, on its handling CPU only: an NMI within its
    tolerance before an expiry (expectations.claim_tolerance)."""
    name, label = "unknown-nmi", guest.spec.label()
    seed = _seed()
    rng = random.Random(seed)
    h = handling_cpu(guest, detector)
    order = [c for c in range(guest.spec.cpus)
             for _ in range(HANDLING_CPU_NMIS if c == h else per_cpu)]
    rng.shuffle(order)
    seq0 = _last_seq(guest)
    start = mark(guest)
    guest.check(_nmi_script(order, rng, guest.spec.watchdog_thresh),
                timeout=len(order) * (NMI_SPACING_S + guest.spec.watchdog_thresh) + 30)
    for _ in range(qmp):
        # Paced, not waiting for anything: the kernel's rate limit and a
        # random phase against the detector's NMIs.
        time.sleep(NMI_SPACING_S + rng.random() * guest.spec.watchdog_thresh / 5)
        guest.qmp.cmd("inject-nmi")
    _flush_console(guest)
    check_tsc_stable(guest, start)
    log = _log_text(guest)
    sent: dict[int, int] = {}
    for r in inject_log.after(inject_log.parse(log), seq0):
        if isinstance(r, inject_log.NmiSent):
            sent[r.cpu] = sent.get(r.cpu, 0) + 1
    if qmp:
        sent[0] = sent.get(0, 0) + qmp
    seen = [e for e in since(guest, start, ("unknown_nmi",)) if "Uhhuh" in e.text]
    text = "\n".join(guest.console.text.splitlines()[start:])
    suppressed = SUPPRESSED.findall(text)
    other = since(guest, start, tuple(k for k in LOCKUP_KINDS + BAD_KINDS
                                       if k != "unknown_nmi"))
    allowed = {h: verdicts.allowed_losses(sent.get(h, 0),
                                          expectations.claim_tolerance(detector))}
    v = verdicts.unknown_nmis(sent, seen, other, suppressed, allowed)
    # ipis_held: forwarded NMIs still due at the next expiry, i.e. a vCPU
    # that did not run for a period, where two NMIs can merge into one.
    return Result(name, label, v.passed, v.reason,
                  {**v.measurements, "seed": seed, "qmp": qmp, "handling_cpu": h,
                   "counters": counters(guest), "inject_log": _log_lines_after(log, seq0)})


def unknown_nmi_panic(guest: Guest, detector: str) -> Result:
    """kernel.unknown_nmi_panic=1, then one NMI to the handling CPU at a
    random moment: the machine must panic. The guest is retired."""
    name = "unknown-nmi-panic"
    try:
        cpu = handling_cpu(guest, detector)
        guest.check("echo 1 > /proc/sys/kernel/unknown_nmi_panic")
        seq0 = _last_seq(guest)
        start = mark(guest)
        delay = round(random.Random(_seed()).random() * guest.spec.watchdog_thresh * 1e6)
        guest.send(f"usleep {delay}; echo 'nmi {cpu} 1' > {INJECT_DIR}/inject")
        panic = wait_event(guest, start, "panic", None, delay / 1e6 + 10)
        sent = None
        if panic is None and guest.alive():
            sent = next((r for r in inject_log.after(_records(guest), seq0)
                         if isinstance(r, inject_log.NmiSent)), None)
        obs = dvd.NmiPanic(start=start, end=mark(guest), cpu=cpu, delay_us=delay,
                           sent_at=sent.time if sent else None, alive=guest.alive())
        return judged(name, guest, dvd.nmi_panic(obs, events_upto(guest, start, obs.end)),
                      obs)
    finally:
        guest.stop()     # panicked, or must not be trusted with unknown_nmi_panic=1


def expiries(guest: Guest) -> int | None:
    """The HPET detector's count of expiries, if it runs."""
    reply = guest.run(f"cat {HLD_DEBUGFS}/nmis")
    return int(reply.output) if reply.status == 0 and reply.output.strip().isdigit() else None


def counters(guest: Guest) -> dict:
    """The detector's debugfs counters that this series has, for the record."""
    out = guest.run(f"cd {HLD_DEBUGFS} 2>/dev/null && grep . nmis early late restarts "
                    "missed mispredicted anchored ipis ipis_held 2>/dev/null").output
    return {k: int(v) for k, _, v in (line.partition(":") for line in out.split())
            if v.isdigit()}


def watch(guest: Guest, start: int, said: list[str], expiries_before: int | None,
          extra: dict | None = None, **rules) -> dvd.Disturbed:
    """After a disturbance that began after console line `start`: watch
    3 x watchdog_thresh (to its end, or to the first report or bad event
    not excused), in which the HPET detector's expiries must come back (its
    watch restarts a silent channel within 2 x thresh). What it saw, for
    harness.disturbance_verdicts; `extra` gets the detector's counters,
    `rules` what else it judges (dvd.Disturbed's excused_* and restart_*)."""
    thresh = guest.spec.watchdog_thresh
    obs = dvd.Disturbed(start=start, watch=mark(guest), end=0, said=list(said),
                        window_s=3 * thresh, expiries=None,
                        expiries_wanted=3 * thresh * expectations.hpet_nmi_rate(thresh) / 2,
                        **rules)

    def bad() -> bool:
        return any(not dvd.excused(obs, e)
                   for e in since(guest, obs.watch, LOCKUP_KINDS + BAD_KINDS))
    guest.console.wait_until(bad, time.monotonic() + 3 * thresh, guest.alive)
    check_tsc_stable(guest, start)
    after = expiries(guest)
    if extra is not None:
        extra.update(counters(guest))
    got = None if expiries_before is None else (after or 0) - expiries_before
    return dataclasses.replace(obs, end=mark(guest), expiries=got)


def judge_disturbed(name: str, guest: Guest, detector: str, obs: dvd.Disturbed,
                    **extra) -> Result:
    """The Result of a disturbance and the lockup made after it, judged on
    the console from the disturbance's start to the lockup's end."""
    end = max(o.end for o in (obs, obs.then_lockup, obs.then_many) if o is not None)
    v = dvd.disturbed(obs, events_upto(guest, obs.start, end), guest.spec,
                      detectors.get(detector))
    return judged(name, guest, v, obs, **extra)


def came_back(guest: Guest, obs: dvd.Disturbed) -> bool:
    """Whether the watch after the disturbance passed, so far."""
    return dvd.came_back(obs, events_upto(guest, obs.start, obs.end)).passed


def then_hard_lockup(guest: Guest, detector: str, obs: dvd.Disturbed) -> dvd.Disturbed:
    """If the machine came back: a real hard lockup on the last CPU, which
    must still be reported in time."""
    if not came_back(guest, obs):
        return obs
    r = hard_lockup(guest, detector, guest.spec.cpus - 1)
    return dataclasses.replace(
        obs, then_lockup=Lockup.from_dict(r.measurements["observation"]))


def nmi_stall(guest: Guest, detector: str) -> Result:
    """The CPU that handles the HPET NMI spends 2.5 x watchdog_thresh in NMI
    context, where it takes no other NMI: its expiries pile up into one
    late NMI. Afterwards the detector must run again and report a lockup."""
    name = "nmi-stall"
    thresh = guest.spec.watchdog_thresh
    cpu = handling_cpu(guest, detector)
    ms = int(2.5 * thresh * 1000)
    before = expiries(guest)
    start = mark(guest)
    seq0 = _last_seq(guest)
    guest.check(f"echo 'nmistall {cpu} {ms}' > {INJECT_DIR}/inject", timeout=ms / 1000 + 30)
    _flush_console(guest)
    stall = next(r for r in inject_log.after(_records(guest), seq0)
                 if isinstance(r, inject_log.Lockup) and r.mode == "nmistall")
    said = [f"cpu {cpu} stuck in NMI context for {stall.seconds:.1f} s"]
    # A CPU stuck in NMI context for longer than watchdog_thresh is a hard
    # lockup, which the HPET detector sees only at the CPU's first NMI
    # after it (it checks a CPU from the CPU's own NMI), and for longer
    # than 2 x thresh a soft lockup, which its hrtimer reports once it
    # runs again. Those reports may come a sample after the stall: excused.
    # The HPET detector's watch, from another CPU, must restart the silent
    # channel within 2 x thresh, so during the stall.
    m: dict = {"cpu": cpu, "stall_ms": ms}
    restart = {} if before is None or guest.spec.cpus < 2 else {
        "restart_cpu": cpu, "restart_after": stall.start, "restart_by": stall.end}
    obs = watch(guest, start, said, before, extra=m, excused_cpu=cpu,
                excused_until=stall.end + 2 * thresh / 5 + 0.5, **restart)
    return judge_disturbed(name, guest, detector, then_hard_lockup(guest, detector, obs), **m)


# machine-stalls: the machine frozen for STALL of every STALL + RUN, in
# expiry periods (watchdog_thresh / 5): under half a period, so that an
# expiry is late by less than that and never skipped; for STALLED_PERIODS,
# then left to run FREE_PERIODS (its next expiry on time), CYCLES times.
STALL_PERIODS, RUN_PERIODS = 0.45, 0.04
STALLED_PERIODS, FREE_PERIODS, CYCLES = 16, 2, 2


def stall_bursts(guest: Guest, seconds: float, stall_s: float, run_s: float) -> int:
    """Freeze the whole machine (SIGSTOP to QEMU) for `stall_s`, let it run
    for `run_s`, for `seconds`; how many stalls. Its clocks run on: the
    guest's TSC is the host's, its HPET counter QEMU's virtual clock, which
    only a QMP stop holds. The guest is always continued."""
    pid, stalls = guest.proc.pid, 0
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end and guest.alive():
            os.kill(pid, signal.SIGSTOP)
            stalls += 1
            # The stall is the action itself, not a wait for something.
            time.sleep(stall_s)
            os.kill(pid, signal.SIGCONT)
            time.sleep(run_s)
    finally:
        if guest.alive():
            os.kill(pid, signal.SIGCONT)
    return stalls


def machine_stalls(guest: Guest, detector: str) -> Result:
    """The whole machine frozen again and again while its clocks run on, as
    SMIs do on hardware and a host that does not run its VM: 0.45 of every
    0.49 expiry periods for 16 periods, then free for 2, twice. Every
    expiry comes late, by up to 0.45 of a period, then one on time: none
    may be taken for an unknown NMI, nothing may be reported, and the
    expiries must go on."""
    name = "machine-stalls"
    thresh = guest.spec.watchdog_thresh
    period = thresh / 5
    start = mark(guest)
    stall_s, run_s = STALL_PERIODS * period, RUN_PERIODS * period
    stalls = 0
    for _ in range(CYCLES):
        stalls += stall_bursts(guest, STALLED_PERIODS * period, stall_s, run_s)
        # Running free is the action itself, not a wait for something.
        time.sleep(FREE_PERIODS * period)
    _flush_console(guest)
    m: dict = {"stalls": stalls, "stall_ms": round(stall_s * 1000),
               "run_ms": round(run_s * 1000), "cycles": CYCLES}
    said = [f"{stalls} stalls of {stall_s * 1000:.0f} ms every "
            f"{(stall_s + run_s) * 1000:.0f} ms"]
    # Reporting after a disturbance is vm-pause's and nmi-stall's to show.
    # watch() checks the TSC from `start`, the stalls included.
    obs = watch(guest, start, said, expiries(guest), extra=m)
    return judge_disturbed(name, guest, detector, obs, **m)


def vm_pause(guest: Guest, detector: str) -> Result:
    """QMP stop for 3 x watchdog_thresh, then cont: the guest's clocks stand
    still meanwhile, so nothing may be reported, and the detector must go on."""
    name = "vm-pause"
    thresh = guest.spec.watchdog_thresh
    before = expiries(guest)
    start = mark(guest)
    guest.qmp.cmd("stop")
    # The pause is the action itself, not a wait for something.
    time.sleep(3 * thresh)
    guest.qmp.cmd("cont")
    m: dict = {"paused_s": 3 * thresh}
    obs = watch(guest, start, [f"paused {3 * thresh} s"], before, extra=m)
    return judge_disturbed(name, guest, detector, then_hard_lockup(guest, detector, obs), **m)
