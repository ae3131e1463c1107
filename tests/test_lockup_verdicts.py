"""The lockup and detector verdicts (harness/lockup_verdicts.py,
harness/detector_verdicts.py) on what real guests printed, and rule by rule.

Each directory under tests/logs/lockup/ and tests/logs/detector/ is one case
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

from harness import console_events, detectors
from harness import detector_verdicts as dv
from harness import lockup_verdicts as lv
from harness.console_events import Event
from harness.machine import MachineSpec

LOGS = Path(__file__).parent / "logs"
CASES = sorted(p for kind in ("lockup", "detector") for p in (LOGS / kind).iterdir()
               if p.is_dir())

LOCKUPS = ("hard-lockup", "soft-lockup", "hard-lockup-test_lockup", "soft-lockup-test_lockup",
           "lkdtm-hardlockup", "lkdtm-softlockup", "lkdtm-spinlockup", "lkdtm-hung-task",
           "canary-wrong-cpu")
LOCKUP_FAMILY = LOCKUPS + ("boot", "idle", "soak")
DETECTOR_FAMILY = ("enabled", "all-locked", "all-but-one-locked", "cpumask-excluded",
                   "sysrq-backtrace", "declines", "irq-path", "runtime-changes",
                   "handling-cpu-hotplug")

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
    **{s: lambda o, ev, text, spec, det: dv.steps(dv.Steps.from_dict(o), ev, spec, det)
       for s in ("runtime-changes", "handling-cpu-hotplug")},
}


def replay(case: Path):
    """What the scenario did after acting, on the files: (verdict, events)."""
    expect = json.loads((case / "expect.json").read_text())
    record = json.loads((case / "record.json").read_text())
    spec = MachineSpec(**dict(expect["spec"], cmdline_extra=tuple(expect["spec"]["cmdline_extra"])))
    text = (case / "console.log").read_bytes().decode("utf-8", errors="replace")
    # console.log starts after line `start` of the guest's console.
    events = [dataclasses.replace(e, line=e.line + expect["start"])
              for e in console_events.parse_text(text)]
    judge = JUDGES[expect["scenario"]]
    return judge(record["observation"], events, text, spec,
                 detectors.get(expect["detector"])), events


def _json(value):
    return json.loads(json.dumps(value))


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
    case = next(c for c in CASES if c.name == name)
    expect = json.loads((case / "expect.json").read_text())
    text = (case / "console.log").read_text()
    spec = MachineSpec(**dict(expect["spec"], cmdline_extra=tuple(expect["spec"]["cmdline_extra"])))
    return (json.loads((case / "record.json").read_text())["observation"],
            console_events.parse_text(text), text, spec)


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
