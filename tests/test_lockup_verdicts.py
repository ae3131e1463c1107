"""The lockup, detector and disturbance verdicts (harness/lockup_verdicts.py,
harness/detector_verdicts.py, harness/disturbance_verdicts.py) on what
real guests printed, and rule by rule.

Each directory under tests/logs/lockup/, detector/ and disturbance/ is one case
of a real run of the HPET detector's kernel, kept by tests/logs/capture.py:
console.log (the console lines the scenario's observation covers),
record.json (its measurements, with the observation) and expect.json (the
machine, the events parsed from the log when it was captured, and the
verdict the run gave). Judging them again must give the same verdict, the
same reason and the same measurements, so a change to the parser or a
verdict rule that would have judged a real run differently fails here,
without QEMU.
"""
import dataclasses
import json
from pathlib import Path

import pytest

from harness import catalog, console_events, detectors
from harness import detector_verdicts as dv
from harness import disturbance_verdicts as dvd
from harness import lockup_verdicts as lv
from harness.console_events import Event
from harness.machine import MachineSpec

LOGS = Path(__file__).parent / "logs"
KINDS = ("lockup", "detector", "disturbance")
CASES = sorted(p for kind in KINDS for p in (LOGS / kind).iterdir() if p.is_dir())

LOCKUPS = ("hard-lockup", "soft-lockup", "hard-lockup-test_lockup", "soft-lockup-test_lockup",
           "lkdtm-hardlockup", "lkdtm-softlockup", "lkdtm-spinlockup", "lkdtm-hung-task",
           "canary-wrong-cpu")
LOCKUP_FAMILY = LOCKUPS + ("boot", "idle", "soak")
DETECTOR_FAMILY = ("enabled", "all-locked", "all-but-one-locked", "cpumask-excluded",
                   "sysrq-backtrace", "declines", "irq-path", "runtime-changes",
                   "handling-cpu-hotplug", "detector-lost")
DISTURBANCES = ("machine-stalls", "vm-pause", "nmi-stall", "suspend-resume")

# scenario -> judge(observation dict, events, console text, spec, detector)
JUDGES = {
    **{s: lambda o, ev, text, spec, det: lv.lockup(lv.Lockup.from_dict(o), ev, spec, det)
       for s in LOCKUPS},
    "boot": lambda o, ev, text, spec, det: lv.boot(lv.Boot.from_dict(o), ev, text, spec, det),
    "idle": lambda o, ev, text, spec, det: lv.idle(lv.Idle.from_dict(o), ev),
    "soak": lambda o, ev, text, spec, det: lv.soak(lv.Soak.from_dict(o), ev, spec, det),
    "enabled": lambda o, ev, text, spec, det: dv.enabled(dv.Enabled.from_dict(o), ev, spec,
                                                         det),
    **{s: lambda o, ev, text, spec, det: dv.many_locked(dv.ManyLocked.from_dict(o), ev, spec,
                                                        det)
       for s in ("all-locked", "all-but-one-locked")},
    "cpumask-excluded": lambda o, ev, text, spec, det: dv.excluded(lv.Lockup.from_dict(o), ev),
    "sysrq-backtrace": lambda o, ev, text, spec, det: dv.sysrq_backtrace(
        dv.Window.from_dict(o), ev, text, spec),
    "declines": lambda o, ev, text, spec, det: dv.declines(dv.Declined.from_dict(o), ev, spec),
    "irq-path": lambda o, ev, text, spec, det: dv.irq_path(dv.IrqPath.from_dict(o), ev, text,
                                                           spec),
    "detector-lost": lambda o, ev, text, spec, det: dv.lost(dv.Lost.from_dict(o), ev, spec,
                                                            detectors.DETECTORS),
    **{s: lambda o, ev, text, spec, det: dv.steps(dv.Steps.from_dict(o), ev, spec, det)
       for s in ("runtime-changes", "handling-cpu-hotplug")},
    **{s: lambda o, ev, text, spec, det: dvd.disturbed(dvd.Disturbed.from_dict(o), ev, spec,
                                                       det)
       for s in DISTURBANCES},
    "unknown-nmi-panic": lambda o, ev, text, spec, det: dvd.nmi_panic(
        dvd.NmiPanic.from_dict(o), ev),
}
# Scenarios whose captured cases are judged by another test file:
# tests/test_verdicts.py (contract/, platform/) and, for the debug
# kernel's reports, tests/test_debug_checks.py (a whole guest console).
JUDGED_ELSEWHERE = {"boundary-sweep": "contract", "unknown-nmi": "contract",
                    "untouched-cpus": "platform", "unbooted-cpus": "platform",
                    "hpet-users": "platform", "kdump": "platform",
                    "irte-retarget": "platform",
                    "canary-debug-report": "guest-hpet-debug-2cpu-canary-debug-report.log"}


def load(case: Path):
    """A captured case's files: (expect, observation dict, console, spec,
    events with the guest console's line numbers)."""
    expect = json.loads((case / "expect.json").read_text())
    record = json.loads((case / "record.json").read_text())
    spec = MachineSpec(**dict(expect["spec"], cmdline_extra=tuple(expect["spec"]["cmdline_extra"])))
    text = (case / "console.log").read_bytes().decode("utf-8", errors="replace")
    # console.log starts after line `start` of the guest's console.
    events = [dataclasses.replace(e, line=e.line + expect["start"])
              for e in console_events.parse_text(text)]
    return expect, record["observation"], text, spec, events


def replay(case: Path):
    """What the scenario did after acting, on the files: (verdict, events)."""
    expect, obs, text, spec, events = load(case)
    judge = JUDGES[expect["scenario"]]
    return judge(obs, events, text, spec, detectors.get(expect["detector"])), events


def _json(value):
    return json.loads(json.dumps(value))


def test_every_scenario_of_the_catalog_has_a_captured_hpet_case():
    """A scenario added without a real HPET run kept here fails this."""
    captured = {}
    for expect in LOGS.glob("*/*/expect.json"):
        e = json.loads(expect.read_text())
        if e["detector"] == "hpet":
            captured.setdefault(e["scenario"], set()).add(expect.parent.parent.name)
    missing = []
    for scenario in catalog.SCENARIOS:
        where = JUDGED_ELSEWHERE.get(scenario)
        if where is None:
            ok = scenario in JUDGES and bool(captured.get(scenario, set()) & set(KINDS))
        elif where.endswith(".log"):
            ok = (LOGS / where).is_file()
        else:
            ok = where in captured.get(scenario, set())
        missing += [] if ok else [scenario]
    assert not missing


def test_every_family_has_hpet_cases_from_real_runs_with_both_verdicts():
    got = {json.loads((c / "expect.json").read_text())["scenario"]: c for c in CASES}
    assert set(got) & set(LOCKUP_FAMILY) and set(got) & set(DETECTOR_FAMILY), sorted(got)
    expects = [json.loads((c / "expect.json").read_text()) for c in CASES]
    assert {e["detector"] for e in expects} == {"hpet"}
    assert {e["passed"] for e in expects} == {True, False}


@pytest.mark.parametrize("case", CASES, ids=[f"{c.parent.name}/{c.name}" for c in CASES])
def test_captured_case_is_judged_again_the_same(case):
    expect = json.loads((case / "expect.json").read_text())
    record = json.loads((case / "record.json").read_text())
    v, events = replay(case)
    kinds: dict[str, int] = {}
    for e in events:
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
    assert kinds == expect["events"]
    assert (v.passed, v.reason) == (expect["passed"], expect["run_reason"])
    for key, value in v.measurements.items():
        assert _json(value) == record[key], key


# -- rule by rule, on events made here --------------------------------------

HPET = detectors.HPET
SPEC4 = MachineSpec(cpus=4, **HPET.machine)


def ev(kind, t, cpu, line, text=""):
    return Event(kind, t, cpu, f"{kind} on cpu {cpu}", line, text or f"{kind} {cpu}")


def locked(cpu=3, expect=None, kind="hard_lockup", **kw):
    return lv.Lockup(**{"start": 10, "end": 100, "kind": kind, "cpu": cpu,
                        "expect": cpu if expect is None else expect, "injected_at": 50.0,
                        "thresh": 2, **kw})


def test_a_report_on_the_locked_cpu_in_time_passes():
    v = lv.lockup(locked(), [ev("hard_lockup", 52.9, 3, 20)], SPEC4, HPET)
    assert v.passed and v.reason == "cpu 3 reported after 2.90 s"
    assert v.measurements["latency_s"] == 2.9


@pytest.mark.parametrize("reports, reason", [
    # the report must name the locked CPU
    ([(52.9, 2, 20)], "got none; reported instead: cpus [2]"),
    ([(52.9, 3, 20), (53.0, 1, 21)], "also reported on cpus [1]"),
    # in time, once
    ([(54.5, 3, 20)], "outside 0..4.0 s"),
    ([(52.9, 3, 20), (53.1, 3, 30)], "reported 2 times on cpu 3"),
    # before the scenario's start line, or after its end: not this lockup's
    ([(52.9, 3, 10), (52.9, 3, 101)], "got none"),
], ids=["other-cpu", "also-other-cpu", "late", "twice", "outside-window"])
def test_a_hard_lockup_report_on_another_cpu_late_twice_or_elsewhere_fails(reports, reason):
    v = lv.lockup(locked(), [ev("hard_lockup", t, cpu, line) for t, cpu, line in reports],
                  SPEC4, HPET)
    assert not v.passed and reason in v.reason, v.reason


def test_soft_lockups_of_waiting_cpus_are_recorded_not_held_against_it():
    v = lv.lockup(locked(kind="soft_lockup"), [ev("soft_lockup", 55.0, 1, 20),
                                               ev("soft_lockup", 56.0, 3, 21)], SPEC4, HPET)
    assert v.passed and v.measurements["knock_on_cpus"] == [1]


def test_anything_bad_fails_and_a_lockup_it_cannot_see_must_stay_unreported():
    v = lv.lockup(locked(), [ev("hard_lockup", 52.9, 3, 20), ev("unknown_nmi", 53, 0, 22)],
                  SPEC4, HPET)
    assert not v.passed and v.reason.startswith("unexpected: line 22")
    one = MachineSpec(cpus=1)
    buddy = detectors.get("buddy")
    assert lv.lockup(locked(cpu=0), [], one, buddy).passed
    v = lv.lockup(locked(cpu=0), [ev("hard_lockup", 52.9, 0, 20)], one, buddy)
    assert not v.passed and v.reason.startswith("reported although")
    perf = detectors.get("perf")      # no PMU: the kernel said so at boot
    assert lv.lockup(locked(off_message=perf.off_message), [], SPEC4, perf).passed
    assert not lv.lockup(locked(), [], SPEC4, perf).passed


def test_hardlockup_panic_must_panic_for_the_lockup_and_go_down():
    spec = SPEC4.with_(hardlockup_panic=True)
    panic = ev("panic", 53.0, 3, 25, "Kernel panic - not syncing: Hard LOCKUP")
    assert lv.lockup(locked(alive=False), [panic], spec, HPET).passed
    assert "never went down" in lv.lockup(locked(alive=True), [panic], spec, HPET).reason
    other = dataclasses.replace(panic, text="Kernel panic - not syncing: Fatal exception")
    assert "another reason" in lv.lockup(locked(alive=False), [other], spec, HPET).reason
    assert "but no panic" in lv.lockup(locked(alive=False), [], spec, HPET).reason


def test_many_locked_wants_each_cpu_the_detector_can_see():
    obs = dv.ManyLocked(10, 100, [0, 1, 2, 3], {c: 50.0 for c in range(4)}, 2)
    reports = [ev("hard_lockup", 52.5 + c / 10, c, 20 + c) for c in range(4)]
    assert dv.many_locked(obs, reports, SPEC4, HPET).passed
    v = dv.many_locked(obs, reports[:3], SPEC4, HPET)
    assert not v.passed and "reported cpus [0, 1, 2], expected [0, 1, 2, 3]" in v.reason
    # buddy: a locked CPU is seen only by a free CPU before it
    obs3 = dataclasses.replace(obs, cpus=[1, 2, 3], injected_at={c: 50.0 for c in (1, 2, 3)})
    buddy = detectors.get("buddy")
    assert dv.many_locked(obs3, reports[1:2], SPEC4, buddy).passed
    assert not dv.many_locked(obs3, reports[1:3], SPEC4, buddy).passed


def test_a_cpu_outside_the_mask_must_not_be_reported():
    assert dv.excluded(locked(cpu=2), []).passed
    v = dv.excluded(locked(cpu=2), [ev("hard_lockup", 53.0, 2, 20)])
    assert not v.passed and "outside watchdog_cpumask but was reported" in v.reason


def test_a_cpu_waiting_on_the_excluded_one_is_a_knock_on_not_a_failure():
    """A real console (make test, first attempt): CPU 2, outside the mask,
    locked 8 s with interrupts off; the shell on CPU 3 waits in
    on_each_cpu_cond_mask() for it and is reported as a soft lockup."""
    log = Path(__file__).parent / "data" / "cpumask-excluded-knock-on-soft-lockup.log"
    events = console_events.parse_file(log)
    assert [(e.kind, e.cpu) for e in events if e.kind == "soft_lockup"] == [("soft_lockup", 3)]
    obs = locked(cpu=2, start=0, end=len(log.read_text().split("\n")), injected_at=6.602747)
    v = dv.excluded(obs, events)
    assert v.passed and v.measurements["knock_on_cpus"] == [3], v.reason
    # A hard lockup report of another CPU, or the excluded CPU's own soft
    # lockup, is still a failure
    other = dataclasses.replace(events[0], kind="hard_lockup", cpu=3, line=4)
    assert not dv.excluded(obs, events + [other]).passed
    own = dataclasses.replace(events[0], kind="soft_lockup", cpu=2, line=5)
    assert not dv.excluded(obs, events + [own]).passed


def test_enabled_wants_every_cpu_monitored_at_one_rate():
    obs = dv.Enabled(10, 100, nmi_watchdog="1", enabled_said=True, monitored=[0, 1, 2, 3],
                     channel=2, handling_cpu=1, nmis_before=[0] * 4,
                     nmis_after=[25, 25, 25, 25], elapsed_s=10.0)
    assert dv.enabled(obs, [], SPEC4, HPET).passed
    assert "not all CPUs" in dv.enabled(dataclasses.replace(obs, monitored=[0, 1, 2]), [],
                                        SPEC4, HPET).reason
    assert "outside" in dv.enabled(dataclasses.replace(obs, nmis_after=[25, 25, 25, 5]), [],
                                   SPEC4, HPET).reason
    assert "unequal" in dv.enabled(dataclasses.replace(obs, nmis_after=[20, 20, 20, 30]), [],
                                   SPEC4, HPET).reason


def test_a_sequence_stops_at_its_first_wrong_step_and_says_each():
    on = dv.Step("thresh=2", locked())
    off = dv.Step("thresh=0", dataclasses.replace(locked(), start=100, end=200), False)
    reports = [ev("hard_lockup", 52.9, 3, 20)]
    v = dv.steps(dv.Steps([on, off], said=["handling cpu 1"]), reports, SPEC4, HPET)
    assert v.passed and v.reason == "handling cpu 1; thresh=2: cpu 3 reported after 2.90 s; " \
                                    "thresh=0: 0 reports"
    v = dv.steps(dv.Steps([on, off]), reports + [ev("hard_lockup", 60.0, 3, 150)], SPEC4, HPET)
    assert not v.passed and v.reason.startswith("thresh=2: cpu 3 reported after 2.90 s; "
                                                "thresh=0: 1 reports while disabled: line 150")
    assert not dv.steps(dv.Steps([on, off]), [], SPEC4, HPET).passed
    assert not dv.steps(dv.Steps([]), reports, SPEC4, HPET).passed


def test_observations_survive_json():
    obs = lv.Soak(1, 2, 60.0, [1], [2], 60.0, canary=locked())
    assert lv.Soak.from_dict(_json(obs.to_dict())) == obs
    many = dv.ManyLocked(1, 2, [0, 1], {0: 1.5, 1: 2.5}, 2)
    assert dv.ManyLocked.from_dict(_json(many.to_dict())) == many
    seq = dv.Steps([dv.Step("a", locked()), dv.Step("b", locked(), False)], ["x"])
    assert dv.Steps.from_dict(_json(seq.to_dict())) == seq


def _case(name: str):
    """A captured case's (observation dict, events, console, spec)."""
    _, obs, text, spec, events = load(next(c for c in CASES if c.name == name))
    return obs, events, text, spec


def test_a_blocked_channel_must_fault_give_up_and_say_so_in_nmi_watchdog():
    """The real xAPIC/undescribed case, with one fact changed at a time."""
    obs, events, text, spec = _case("hpet-4cpu-xapic-undescribed-irq-path")
    judge = lambda o, t=text: dv.irq_path(dv.IrqPath.from_dict(o), events, t, spec)  # noqa: E731
    assert judge(obs).passed
    v = judge({**obs, "nmi_watchdog": "1"})
    assert not v.passed and "nmi_watchdog reads '1', not '0'" in v.reason
    assert "restarts (expected none, and at least one)" in judge({**obs, "restarts": 0}).reason
    no_fault = "\n".join(l for l in text.split("\n") if "fault reason 0x25" not in l)
    assert "no fault 25h" in judge(obs, no_fault).reason
    # on a kernel preferring buddy, buddy must have taken over
    v = dv.irq_path(dv.IrqPath.from_dict(obs), events, text, spec.with_(flavour="buddy-fallback"))
    assert not v.passed and "nothing took over, expected buddy" in v.reason


def test_a_declined_detector_must_take_no_channel():
    obs, events, text, spec = _case("hpet-4cpu-x2apic-undescribed-irq-path")
    assert dv.irq_path(dv.IrqPath.from_dict(obs), events, text, spec).passed
    v = dv.irq_path(dv.IrqPath.from_dict({**obs, "debugfs": True}), events, text, spec)
    assert not v.passed and "a channel is taken" in v.reason
    # and where the HPET is in the DMAR, its message would be wrong
    assert not dv.irq_path(dv.IrqPath.from_dict(obs), events, text,
                           spec.with_(iommu_hpet=True)).passed


def test_an_enabled_channel_must_be_on_its_chip_and_take_nmis():
    obs, events, text, spec = _case("hpet-4cpu-irq-path")
    assert dv.irq_path(dv.IrqPath.from_dict(obs), events, text, spec).passed
    v = dv.irq_path(dv.IrqPath.from_dict({**obs, "chips": ["IR-HPET-MSI"]}), events, text, spec)
    assert not v.passed and "expected HPET-MSI" in v.reason
    v = dv.irq_path(dv.IrqPath.from_dict({**obs, "nmis": [40, 40]}), events, text, spec)
    assert not v.passed and v.reason.startswith("no NMI from channel 2")


def disturbed(**kw):
    return dvd.Disturbed(**{"start": 10, "watch": 50, "end": 90, "said": ["stalled"],
                            "window_s": 6, "expiries": 20, "expiries_wanted": 15, **kw})


def test_a_disturbance_fails_on_a_report_during_or_after_it_or_a_detector_not_back():
    assert dvd.disturbed(disturbed(), [], SPEC4, HPET).reason == \
        "stalled; 20 expiries in 6 s"
    v = dvd.disturbed(disturbed(), [ev("unknown_nmi", 12.0, 0, 30)], SPEC4, HPET)
    assert not v.passed and v.reason.startswith("stalled; during them: "), v.reason
    v = dvd.disturbed(disturbed(), [ev("soft_lockup", 20.0, 2, 60)], SPEC4, HPET)
    assert not v.passed and v.reason.startswith("stalled; then: "), v.reason
    # before its start or after its end: not this disturbance's
    assert dvd.disturbed(disturbed(), [ev("hard_lockup", 1.0, 2, 10),
                                       ev("oops", 30.0, 1, 91)], SPEC4, HPET).passed
    v = dvd.disturbed(disturbed(expiries=14), [], SPEC4, HPET)
    assert not v.passed and "the detector did not come back" in v.reason
    # a detector without expiries to count (buddy): only reports fail it
    assert dvd.disturbed(disturbed(expiries=None), [], SPEC4, HPET).passed


def test_only_the_stalled_cpus_own_report_in_time_is_excused():
    obs = disturbed(excused_cpu=0, excused_until=30.0)
    for own in (ev("hard_lockup", 29.5, 0, 52), ev("soft_lockup", 29.9, 0, 12)):
        assert dvd.disturbed(obs, [own], SPEC4, HPET).passed
    for late_or_other in (ev("hard_lockup", 30.5, 0, 52), ev("hard_lockup", 29.5, 1, 52),
                          ev("soft_lockup", 30.1, 0, 12), ev("unknown_nmi", 29.5, 0, 52)):
        assert not dvd.disturbed(obs, [late_or_other], SPEC4, HPET).passed, late_or_other


def test_the_watch_must_restart_the_stalled_cpus_channel_while_it_is_stalled():
    obs = disturbed(restart_cpu=1, restart_after=20.0, restart_by=25.0)
    restarted = ev("detector_restarted", 24.0, 1, 30)
    v = dvd.disturbed(obs, [restarted], SPEC4, HPET)
    assert v.passed and v.measurements["restarted_after_s"] == 4.0
    assert v.reason.endswith("; the watch restarted the channel of cpu 1 after 4.00 s")
    for late_or_other in (dataclasses.replace(restarted, time=25.5),
                          dataclasses.replace(restarted, cpu=2),
                          dataclasses.replace(restarted, line=95)):
        v = dvd.disturbed(obs, [late_or_other], SPEC4, HPET)
        assert not v.passed and v.reason == "stalled; the watch did not restart the " \
                                            "channel of cpu 1 within 5.0 s", v.reason
    assert dvd.disturbed(disturbed(), [], SPEC4, HPET).passed     # not asked for


def test_the_lockup_after_a_disturbance_is_judged_as_its_own_scenario_judges_it():
    obs = disturbed(then_lockup=locked(start=95, end=140))
    v = dvd.disturbed(obs, [ev("hard_lockup", 52.9, 3, 100)], SPEC4, HPET)
    assert v.passed and v.reason == "stalled; 20 expiries in 6 s; then cpu 3 reported " \
                                    "after 2.90 s", v.reason
    assert v.measurements["lockup_after"]["latency_s"] == 2.9
    v = dvd.disturbed(obs, [], SPEC4, HPET)
    assert not v.passed and "then expected a hard_lockup report on cpu 3" in v.reason
    many = dv.ManyLocked(95, 140, [0, 1], {0: 50.0, 1: 50.0}, 2)
    reports = [ev("hard_lockup", 52.0, 0, 100), ev("hard_lockup", 52.5, 1, 101)]
    assert dvd.disturbed(disturbed(then_many=many), reports, SPEC4, HPET).passed
    assert not dvd.disturbed(disturbed(then_many=many), reports[:1], SPEC4, HPET).passed
    assert dvd.Disturbed.from_dict(_json(obs.to_dict())) == obs


def test_an_unknown_nmi_must_panic_for_that_reason():
    obs = dvd.NmiPanic(start=10, end=40, cpu=0, delay_us=1000, sent_at=None, alive=False)
    nmi = ev("panic", 12.0, 0, 20, "Kernel panic - not syncing: NMI: Not continuing")
    v = dvd.nmi_panic(obs, [nmi])
    assert v.passed and v.measurements == {"cpu": 0}
    other = ev("panic", 12.0, 0, 20, "Kernel panic - not syncing: Hard LOCKUP")
    assert "panicked for another reason" in dvd.nmi_panic(obs, [other, nmi]).reason
    v = dvd.nmi_panic(dataclasses.replace(obs, alive=True, sent_at=11.0), [])
    assert not v.passed and v.reason.endswith("the guest is still up")
    assert not dvd.nmi_panic(obs, [dataclasses.replace(nmi, line=41)]).passed


def test_real_machine_stalls_go_red_on_one_unknown_nmi_or_too_few_expiries():
    """The green run of the fixed v3, with one fact changed at a time; the
    earlier v3's red run is replayed with the others above."""
    obs, events, text, spec = _case("hpet-4cpu-machine-stalls")
    judge = lambda o, ev=events: dvd.disturbed(dvd.Disturbed.from_dict(o), ev, spec,  # noqa: E731
                                               HPET)
    assert judge(obs).passed
    uhhuh = Event("unknown_nmi", 1.0, 1, "unknown NMI, reason 21", obs["start"] + 1,
                  "Uhhuh. NMI received for unknown reason 21 on CPU 1.")
    v = judge(obs, events + [uhhuh])
    assert not v.passed and "during them: " in v.reason, v.reason
    # the same line printed in the watch after the stalls
    v = judge({**obs, "end": obs["end"] + 1},
              events + [dataclasses.replace(uhhuh, line=obs["end"] + 1)])
    assert not v.passed and "then: " in v.reason, v.reason
    v = judge({**obs, "expiries": int(obs["expiries_wanted"]) - 1})
    assert not v.passed and "the detector did not come back" in v.reason, v.reason
    red = _case("hpet-4cpu-machine-stalls-earlier-v3")
    assert "unknown NMI, reason 21" in judge(red[0], red[1]).reason


def _lost(name: str, drop: str | None = None, add: list[Event] = (), **change):
    """The verdict of a captured detector-lost case with one fact changed:
    a console line dropped (by a text it has), events added, or fields of
    the observation."""
    obs, events, text, spec = _case(name)
    if drop:
        events = [e for e in events if drop not in e.text]
    obs = {**obs, **change}
    return dv.lost(dv.Lost.from_dict(obs), sorted([*events, *add], key=lambda e: e.line),
                   spec, detectors.DETECTORS)


NO_PMU = "hpet-2cpu-detector-lost-no-pmu"
BUDDY_TOOK_OVER = "hpet-2cpu-buddy-fallback-detector-lost"
MSI_BLOCKED = "hpet-4cpu-xapic-undescribed-buddy-fallback-detector-lost"

# The real detector-lost cases (the TSC marked unstable, perf without a
# PMU; the same with buddy preferred; the MSI blocked by the IOMMU, buddy
# preferred), then one fact changed at a time, and the reason it fails.
LOST_CHANGED = [
    (NO_PMU, {"nmi_watchdog": "1"}, "nmi_watchdog reads '1'"),
    (NO_PMU, {"rewritable": True}, "writing it works"),
    (NO_PMU, {"drop": "Hard watchdog permanently disabled"}, "neither a detector took over"),
    (NO_PMU, {"drop": "hpet_hld: disabled"}, "no 'hpet_hld: disabled' line"),
    # the flavour's fallback is buddy: it must have taken over
    (NO_PMU, {"fallback": "buddy"}, "no detector took over, expected buddy"),
    # nothing may be reported before the lockup, nor the lockup itself
    (NO_PMU, {"add": [ev("hard_lockup", 2.2, 0, 272)]}, "meanwhile: line 272"),
    (NO_PMU, {"add": [ev("hard_lockup", 5.0, 1, 274)]}, "reported although"),
    *((name, change, reason) for name in (BUDDY_TOOK_OVER, MSI_BLOCKED)
      for change, reason in [
          ({"drop": "took over"}, "neither a detector took over"),
          ({"nmi_watchdog": "0"}, "nmi_watchdog reads '0'"),
          ({"rewritable": False}, "writing it fails"),
          # the default kernel's fallback is perf, which has no PMU here
          ({"fallback": "perf"}, "buddy took over, expected perf"),
          # buddy must then report the lockup
          ({"drop": "detected hard LOCKUP"}, "got none")]),
]


@pytest.mark.parametrize("name", [NO_PMU, BUDDY_TOOK_OVER, MSI_BLOCKED])
def test_a_captured_detector_lost_case_passes(name):
    assert _lost(name).passed


@pytest.mark.parametrize("name, change, reason", LOST_CHANGED,
                         ids=[f"{n}-{'-'.join(c)}-{i}" for i, (n, c, _) in
                              enumerate(LOST_CHANGED)])
def test_a_lost_detector_must_say_so_and_be_replaced_or_be_off(name, change, reason):
    v = _lost(name, **change)
    assert not v.passed and reason in v.reason, v.reason


def test_a_handover_line_is_one_event_and_names_the_detector():
    line = "[    2.1][   T32] watchdog: Hard watchdog: detector stopped working, buddy took over"
    (e,) = console_events.parse_lines([line])
    assert e.kind == "detector_handover" and e.title == "hardlockup detector lost: buddy took over"


def test_a_handover_long_after_the_detector_said_it_is_disabled_fails():
    obs, events, text, spec = _case(BUDDY_TOOK_OVER)
    late = [dataclasses.replace(e, time=e.time + 10) if e.kind == "detector_handover" else e
            for e in events]
    v = dv.lost(dv.Lost.from_dict(obs), late, spec, detectors.DETECTORS)
    assert not v.passed and "bound 6 s" in v.reason
