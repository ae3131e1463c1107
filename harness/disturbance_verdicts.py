"""Verdicts of the scenarios that disturb the machine and then watch it
(harness/contract_scenarios.py: machine-stalls, vm-pause, nmi-stall,
unknown-nmi-panic; harness/platform_scenarios.py: suspend-resume), as pure
functions of what a scenario recorded and the console's events. No guest
and no I/O here (tests/test_lockup_verdicts.py, tests/logs/disturbance/).
"""
from dataclasses import dataclass

from harness import verdicts
from harness.console_events import Event, EventKind, describe
from harness.detector_verdicts import ManyLocked, many_locked
from harness.detectors import Detector
from harness.inject_log import NmiSent
from harness.lockup_verdicts import (BAD_KINDS, LOCKUP_KINDS, Lockup, Observation, lockup,
                                     of_kinds, window)
from harness.verdicts import Verdict


@dataclass(frozen=True)
class Disturbed(Observation):
    """A disturbance in console lines (start, watch], then a watch of
    `window_s` in (watch, end]: what was done (`said`), the HPET
    detector's expiries counted in the watch (None: another detector) and
    how many it must at least have taken. nmi-stall excuses a hard or soft
    lockup report of the stalled CPU (`excused_cpu`) up to kernel time
    `excused_until`: a CPU stuck in NMI context for 2.5 x watchdog_thresh
    is locked up, hard and soft (its softlockup hrtimer, the first thing
    it runs after, finds it did not schedule for over 2 x thresh). It
    also wants the HPET detector's watch to have restarted the channel of
    that CPU (`restart_cpu`) between kernel times `restart_after` and
    `restart_by`: the watch notices a silent channel within 2 x thresh,
    from another CPU. Then, if the scenario makes one, the lockup it made
    after the watch (`then_lockup`, `then_many`: its own observation)."""
    start: int
    watch: int
    end: int
    said: list[str]
    window_s: float
    expiries: int | None
    expiries_wanted: float
    excused_cpu: int | None = None
    excused_until: float | None = None
    restart_cpu: int | None = None
    restart_after: float | None = None
    restart_by: float | None = None
    then_lockup: Lockup | None = None
    then_many: ManyLocked | None = None


def excused(obs: Disturbed, e: Event) -> bool:
    return (obs.excused_cpu is not None
            and e.kind in (EventKind.HARD_LOCKUP, EventKind.SOFT_LOCKUP)
            and e.cpu == obs.excused_cpu and e.time is not None
            and e.time <= obs.excused_until)


def came_back(obs: Disturbed, events: list[Event]) -> Verdict:
    """No report or bad event (but what is excused) during the disturbance
    nor in the watch after it; for the HPET detector (`expiries` not None)
    at least `expiries_wanted` expiries in that watch, as its own watch
    restarts a silent channel within 2 x watchdog_thresh; and the restart
    asked for (`restart_cpu`), in its time."""
    m: dict = {"expiries_after": obs.expiries}
    said = "; ".join(obs.said)
    bad = [e for e in of_kinds(events, LOCKUP_KINDS + BAD_KINDS) if not excused(obs, e)]
    during, after = window(bad, obs.start, obs.watch), window(bad, obs.watch, obs.end)
    if during:
        return Verdict(False, f"{said}; during them: {describe(during)}", m)
    if after:
        return Verdict(False, f"{said}; then: {describe(after)}", m)
    if obs.expiries is not None and obs.expiries < obs.expiries_wanted:
        return Verdict(False, f"{said}; then only {obs.expiries} expiries in "
                       f"{obs.window_s:g} s, want {obs.expiries_wanted:.0f}: the detector "
                       "did not come back", m)
    back = said if obs.expiries is None else \
        f"{said}; {obs.expiries} expiries in {obs.window_s:g} s"
    if obs.restart_cpu is None:
        return Verdict(True, back, m)
    restart = next((e for e in of_kinds(window(events, obs.start, obs.end),
                                        (EventKind.DETECTOR_RESTARTED,))
                    if e.cpu == obs.restart_cpu and e.time is not None
                    and obs.restart_after <= e.time <= obs.restart_by), None)
    if restart is None:
        return Verdict(False, f"{said}; the watch did not restart the channel of cpu "
                       f"{obs.restart_cpu} within {obs.restart_by - obs.restart_after:.1f} s",
                       m)
    m["restarted_after_s"] = round(restart.time - obs.restart_after, 3)
    return Verdict(True, f"{back}; the watch restarted the channel of cpu "
                   f"{obs.restart_cpu} after {m['restarted_after_s']:.2f} s", m)


def disturbed(obs: Disturbed, events: list[Event], spec, detector: Detector) -> Verdict:
    """came_back(), then the lockup made after it judged as its own
    scenario judges it: the detector still reports."""
    v = came_back(obs, events)
    if not v.passed:
        return v
    if obs.then_lockup is not None:
        then = lockup(obs.then_lockup, events, spec, detector)
    elif obs.then_many is not None:
        then = many_locked(obs.then_many, events, spec, detector)
    else:
        return v
    return Verdict(then.passed, f"{v.reason}; then {then.reason}",
                   {**v.measurements, "lockup_after": then.measurements})


@dataclass(frozen=True)
class NmiPanic(Observation):
    """kernel.unknown_nmi_panic=1, then an NMI sent to `cpu` after
    `delay_us`, in console lines (start, end]; when the module said it sent
    it (kernel time, if it did and no panic showed), and whether the guest
    was alive at the end."""
    start: int
    end: int
    cpu: int
    delay_us: int
    sent_at: float | None
    alive: bool


def nmi_panic(obs: NmiPanic, events: list[Event]) -> Verdict:
    """The first panic after the NMI is the unknown NMI's."""
    panics = of_kinds(window(events, obs.start, obs.end), (EventKind.PANIC,))[:1]
    sent = NmiSent(0, obs.cpu, obs.sent_at) if obs.sent_at is not None else None
    v = verdicts.unknown_nmi_panic(sent, panics, obs.alive)
    return Verdict(v.passed, v.reason, {**v.measurements, "cpu": obs.cpu})
