"""The contract verdicts (harness/verdicts.py) on what real guests printed.

Each directory under tests/logs/contract/ is one case captured from a real
run: console.log (the console from the case's start), inject.log (the
lockup_inject module's record of what it did) and expect.json (scenario,
detector, watchdog_thresh, the NMIs QMP sent, and the verdict the case
got, with a piece of its reason). Parsing and judging them again must give
the same verdict, so a change to the parser or a verdict rule that would
have judged a real run differently fails here, without QEMU.
"""
import dataclasses
import json
import re
from pathlib import Path

import pytest

from harness import console_events, expectations, inject_log, irte, verdicts
from harness.scenarios import BAD_KINDS, LOCKUP_KINDS

CASES = sorted(p for p in (Path(__file__).parent / "logs" / "contract").iterdir()
               if p.is_dir())


def judge(case: Path) -> verdicts.Verdict:
    """What harness.contract_scenarios does after acting, on the files."""
    expect = json.loads((case / "expect.json").read_text())
    events = console_events.parse_file(case / "console.log")
    records = inject_log.parse((case / "inject.log").read_text())
    scenario, detector = expect["scenario"], expect["detector"]
    if scenario == "boundary-sweep":
        sections = [r for r in records if isinstance(r, inject_log.Lockup)]
        reports = [e for e in events if e.kind == "hard_lockup"]
        bad = [e for e in events if e.kind in LOCKUP_KINDS + BAD_KINDS
               and e.kind != "hard_lockup"]
        return verdicts.sweep(sections, reports, bad, detector, expect["thresh"])
    if scenario == "unknown-nmi":
        sent: dict[int, int] = {}
        for r in records:
            if isinstance(r, inject_log.NmiSent):
                sent[r.cpu] = sent.get(r.cpu, 0) + 1
        if expect.get("qmp"):
            sent[0] = sent.get(0, 0) + expect["qmp"]
        seen = [e for e in events if e.kind == "unknown_nmi" and "Uhhuh" in e.text]
        other = [e for e in events if e.kind in LOCKUP_KINDS + BAD_KINDS
                 and e.kind != "unknown_nmi"]
        h = expect.get("handling_cpu")
        allowed = {} if h is None else {
            h: verdicts.allowed_losses(sent.get(h, 0), expectations.claim_tolerance(detector))}
        return verdicts.unknown_nmis(sent, seen, other, [], allowed)
    raise AssertionError(f"{case}: no judge for scenario {scenario!r}")


def test_there_are_cases_from_both_series_and_both_verdicts():
    kinds = {(json.loads((c / "expect.json").read_text())["scenario"],
              json.loads((c / "expect.json").read_text())["passed"]) for c in CASES}
    for scenario in ("boundary-sweep", "unknown-nmi"):
        assert (scenario, True) in kinds and (scenario, False) in kinds, kinds


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_captured_verdict_is_reproduced(case):
    expect = json.loads((case / "expect.json").read_text())
    v = judge(case)
    assert v.passed == expect["passed"], v.reason
    assert expect["reason_contains"] in v.reason, v.reason


def _lockup(seq, cpu, start, seconds, thresh=2):
    return inject_log.Lockup(seq, cpu, "irqoff", round(seconds * 1000), start, start + seconds)


def _report(cpu, t, line=1):
    return console_events.Event("hard_lockup", t, cpu, f"hard LOCKUP on cpu {cpu}", line, "")


def test_sweep_rejects_a_report_below_the_floor_and_names_it():
    sections = [_lockup(0, 1, 10.0, 1.2), _lockup(1, 1, 20.0, 2.6)]
    v = verdicts.sweep(sections, [_report(1, 10.9)], [], "hpet", 2)
    assert not v.passed and "0.60 x thresh" in v.reason and "cpu 1" in v.reason
    # buddy's own floor is 0.8 thresh: 0.6 is below it as well
    assert not verdicts.sweep(sections, [_report(1, 10.9)], [], "buddy", 2).passed


def test_sweep_accepts_reports_at_or_above_the_floor_and_measures_the_boundary():
    sections = [_lockup(0, 1, 10.0, 1.9), _lockup(1, 3, 10.0, 2.4), _lockup(2, 1, 20.0, 3.0)]
    v = verdicts.sweep(sections, [_report(3, 12.0)], [], "hpet", 2)
    assert v.passed, v.reason
    assert v.measurements["shortest_reported_x_thresh"] == 1.2
    assert v.measurements["longest_unreported_x_thresh"] == 1.5
    # the same 1.9 s section reported by buddy (floor 0.8) is fine too
    assert verdicts.sweep(sections[:1], [_report(1, 11.5)], [], "buddy", 2).passed


def test_sweep_rejects_a_report_outside_every_section():
    sections = [_lockup(0, 1, 10.0, 0.4)]
    for stray in (_report(1, 15.0), _report(2, 10.2)):   # later; another CPU
        v = verdicts.sweep(sections, [stray], [], "hpet", 2)
        assert not v.passed and "outside every injected section" in v.reason


def test_sweep_without_sections_fails():
    assert not verdicts.sweep([], [], [], "hpet", 2).passed


def test_unknown_nmis_must_be_counted_one_for_one():
    def uhhuh(cpu):
        return console_events.Event("unknown_nmi", 1.0, cpu, "unknown NMI", 1,
                                    f"Uhhuh. NMI received for unknown reason 00 on CPU {cpu}.")
    sent = {0: 2, 1: 1}
    assert verdicts.unknown_nmis(sent, [uhhuh(0), uhhuh(0), uhhuh(1)], [], []).passed
    v = verdicts.unknown_nmis(sent, [uhhuh(0), uhhuh(1)], [], [])
    assert not v.passed and "cpu 0: 2 sent, 1 reported" in v.reason
    assert v.measurements["swallowed"] == {"0": 1}
    v = verdicts.unknown_nmis(sent, [uhhuh(0), uhhuh(0), uhhuh(1), uhhuh(2)], [], [])
    assert not v.passed and "cpu 2: none sent, 1 reported" in v.reason
    v = verdicts.unknown_nmis(sent, [], [], ["unknown_nmi_error: 3 callbacks suppressed"])
    assert not v.passed and "rate-limited" in v.reason


def test_the_handling_cpu_may_lose_what_the_tolerance_allows_and_no_more():
    def uhhuh(cpu):
        return console_events.Event("unknown_nmi", 1.0, cpu, "unknown NMI", 1,
                                    f"Uhhuh. NMI received for unknown reason 00 on CPU {cpu}.")
    assert verdicts.allowed_losses(8, 1 / 128) == 1
    assert verdicts.allowed_losses(8, 0.0) == 0 and verdicts.allowed_losses(0, 1 / 128) == 0
    sent = {1: 8, 2: 3}
    seen = [uhhuh(1)] * 7 + [uhhuh(2)] * 3
    v = verdicts.unknown_nmis(sent, seen, [], [], {1: 1})
    assert v.passed and "but 1, within the detector's tolerance" in v.reason
    # not on another CPU, and not two
    assert not verdicts.unknown_nmis(sent, [uhhuh(1)] * 8 + [uhhuh(2)] * 2, [], [], {1: 1}).passed
    v = verdicts.unknown_nmis(sent, [uhhuh(1)] * 6 + [uhhuh(2)] * 3, [], [], {1: 1})
    assert not v.passed and "cpu 1: 8 sent, 6 reported (1 may be lost)" in v.reason


def test_a_lockup_reported_twice_is_found_in_a_real_log():
    """A series state (v2, before the fix in patch 7) whose own report
    printing touched the watchdog and so rearmed the report: one 8 s lockup
    of cpu 3, two reports. tests/logs/README.md says where it came from."""
    from harness.lockup_verdicts import repeated_reports
    logs = Path(__file__).parent / "logs"
    twice = console_events.parse_file(logs / "guest-hpet-v2c-4cpu-hard-lockup-reported-twice.log")
    hard = [e for e in twice if e.kind == "hard_lockup"]
    assert repeated_reports(hard) == {3: 2}
    assert repeated_reports(hard[:1]) == {}


# -- The platform scenarios (harness/platform_scenarios.py) ------------------

PLATFORM = sorted(p for p in (Path(__file__).parent / "logs" / "platform").iterdir()
                  if p.is_dir())


def judge_platform(case: Path) -> verdicts.Verdict:
    """What harness.platform_scenarios does after acting, on the files:
    record.json is what the scenario recorded (its measurements)."""
    expect = json.loads((case / "expect.json").read_text())
    rec = json.loads((case / "record.json").read_text())
    events = console_events.parse_file(case / "console.log")
    bad = [e for e in events if e.kind in LOCKUP_KINDS + BAD_KINDS]
    scenario = expect["scenario"]
    if scenario == "untouched-cpus":
        return verdicts.untouched(verdicts.nmi_counts(rec["interrupts_before"]),
                                  verdicts.nmi_counts(rec["interrupts_after"]),
                                  rec["excluded"], rec["monitored"], rec["window_s"],
                                  rec["rate"], bad,
                                  boot_mask=rec["boot_mask"] if rec.get("nohz_full") else None)
    if scenario == "irte-retarget":
        return verdicts.irte_follows(irte_steps(rec), rec["x2apic"], rec["routing"], bad)
    if scenario == "kdump":
        return verdicts.kdump((case / "console.log").read_text(), rec["cpu"], rec["dump"],
                              "nmi_watchdog=hpet" in rec["cmdline"].split(),
                              BAD_KINDS + LOCKUP_KINDS)
    if scenario == "hpet-users":
        return verdicts.hpet_users("\n".join(rec["output"]) + "\n", rec["detector_channel"],
                                   rec["irqs_wanted"], rec["expiries"],
                                   rec["expiries_wanted"], bad)
    if scenario == "unbooted-cpus":    # its console has the lockups it made
        lockups = {int(c): (r["passed"], r["reason"]) for c, r in rec["lockups"].items()}
        return verdicts.unbooted(rec["hw_cpus"], rec["online"], rec["monitored"],
                                 rec["boots"], [], lockups)
    raise AssertionError(f"{case}: no judge for scenario {scenario!r}")


def irte_steps(rec: dict) -> list[verdicts.IrteStep]:
    return [verdicts.IrteStep(row["step"], row["away"], row["handling_cpu"], cpuinfo, table,
                              tuple(row["expiries"]))
            for row, cpuinfo, table in zip(rec["steps"], rec["cpuinfo"], rec["tables"])]


def test_platform_cases_have_both_verdicts_from_real_runs():
    got = {(json.loads((c / "expect.json").read_text())["scenario"],
            json.loads((c / "expect.json").read_text())["passed"]) for c in PLATFORM}
    for scenario in ("untouched-cpus", "unbooted-cpus"):
        assert (scenario, True) in got and (scenario, False) in got, got
    for scenario in ("hpet-users", "irte-retarget", "kdump"):
        assert (scenario, True) in got, got


@pytest.mark.parametrize("case", PLATFORM, ids=[c.name for c in PLATFORM])
def test_captured_platform_verdict_is_reproduced(case):
    expect = json.loads((case / "expect.json").read_text())
    v = judge_platform(case)
    assert v.passed == expect["passed"], v.reason
    assert expect["reason_contains"] in v.reason, v.reason


def test_untouched_fails_on_one_nmi_outside_the_mask_and_on_a_starved_cpu():
    before = {0: 4, 1: 4, 2: 4}
    assert verdicts.untouched(before, {0: 19, 1: 19, 2: 4}, [2], [0, 1], 6, 2.5, []).passed
    v = verdicts.untouched(before, {0: 19, 1: 19, 2: 5}, [2], [0, 1], 6, 2.5, [])
    assert not v.passed and "cpu 2: 1 in 6 s" in v.reason
    v = verdicts.untouched(before, {0: 19, 1: 6, 2: 4}, [2], [0, 1], 6, 2.5, [])
    assert not v.passed and "cpu 1 took 2 NMIs" in v.reason
    # a detector that sends no NMI (buddy): rate 0, nothing to starve
    assert verdicts.untouched(before, before, [2], [0, 1], 6, 0.0, []).passed


def test_nmi_counts_reads_only_the_online_cpus_columns():
    text = ("           CPU0       CPU1       CPU3       \n"
            " NMI:          7          8          9   Non-maskable interrupts\n")
    assert verdicts.nmi_counts(text) == {0: 7, 1: 8, 3: 9}
    assert verdicts.nmi_counts("") == {}


def test_unbooted_fails_on_a_reset_a_wrong_mask_or_an_unreported_lockup():
    ok = {1: (True, "cpu 1 reported after 3.0 s")}
    assert verdicts.unbooted(4, [0, 1], [0, 1], 1, [], ok).passed
    assert "reset" in verdicts.unbooted(4, [0, 1], [0, 1], 2, [], ok).reason
    assert "monitors cpus [0]" in verdicts.unbooted(4, [0, 1], [0], 1, [], ok).reason
    v = verdicts.unbooted(4, [0, 1], [0, 1], 1, [], {1: (False, "got none")})
    assert not v.passed and "cpu 1: got none" in v.reason


def test_hpet_users_fails_when_the_detectors_channel_is_handed_out():
    out = "hpet: handed out 2 3 (then: Device or resource busy)\nhpet: channel 2 irqs 64\n" \
          "rtc: updates 2\n"
    v = verdicts.hpet_users(out, 2, 64, 10, 5, [])
    assert not v.passed and "channel 2, the detector's" in v.reason
    assert verdicts.hpet_users(out.replace("out 2 3", "out 3"), 2, 64, 10, 5, []).passed
    assert not verdicts.hpet_users(out.replace("updates 2", "updates 0"), 1, 64, 10, 5,
                                   []).passed


PLATFORM_DIR = Path(__file__).parent / "logs" / "platform"


def test_irte_parse_reads_the_debugfs_table_of_a_real_guest():
    rec = json.loads((PLATFORM_DIR / "v3-hpet-4cpu-iommu-x2apic-irte-retarget"
                      / "record.json").read_text())
    entries = irte.parse(rec["tables"][0])
    assert len(entries) >= 2 and all(e.source_id for e in entries)
    (nmi,) = irte.nmi_entries(entries)
    assert nmi.source_id == irte.HPET_SOURCE_ID and nmi.logical
    # cluster x2apic: the handling cpu's logical id, all 32 bits with EIM
    assert nmi.destination(True) == 1 << rec["steps"][0]["handling_cpu"]
    fixed = [e for e in entries if e.delivery_mode == "fixed"]
    assert fixed and all(e.vector for e in fixed)


def test_irte_follows_fails_on_a_stale_destination_a_fixed_irte_or_no_move():
    for name in ("v3-hpet-4cpu-iommu-x2apic-irte-retarget", "v3-hpet-4cpu-iommu-irte-retarget"):
        rec = json.loads((PLATFORM_DIR / name / "record.json").read_text())
        steps = irte_steps(rec)
        assert verdicts.irte_follows(steps, rec["x2apic"], rec["routing"], []).passed
        # The IRTE left where it was after the handling cpu moved
        stale = [steps[0], dataclasses.replace(steps[1], table=steps[0].table)] + steps[2:]
        v = verdicts.irte_follows(stale, rec["x2apic"], rec["routing"], [])
        assert not v.passed and "is aimed at" in v.reason, v.reason
        # The IRTE with fixed delivery (series patch 2 reverted): no NMI IRTE
        fixed = [dataclasses.replace(s, table=re.sub(
            r"(ff:0f\.0.*\t)([0-9a-f]{16})",
            lambda m: m[1] + f"{int(m[2], 16) & ~0xe0:016x}", s.table)) for s in steps]
        v = verdicts.irte_follows(fixed, rec["x2apic"], rec["routing"], [])
        assert not v.passed and "0 IRTEs with NMI delivery" in v.reason, v.reason
        # The detector kept the cpu that was taken away
        kept = [steps[0], dataclasses.replace(steps[1], handling_cpu=steps[1].away,
                                              cpuinfo=steps[0].cpuinfo, table=steps[0].table)]
        v = verdicts.irte_follows(kept, rec["x2apic"], rec["routing"], [])
        assert not v.passed and "still handled by cpu" in v.reason, v.reason
        # No expiry arrived through the moved IRTE
        silent = [steps[0], dataclasses.replace(steps[1], expiries=(9, 9))]
        v = verdicts.irte_follows(silent, rec["x2apic"], rec["routing"], [])
        assert not v.passed and "no expiry" in v.reason, v.reason


def test_expected_destination_follows_linuxs_apic_driver():
    assert verdicts.expected_destination("physical flat", 3) == (False, 3)
    assert verdicts.expected_destination("physical x2apic", 17) == (False, 17)
    assert verdicts.expected_destination("cluster x2apic", 17) == (True, 1 << 16 | 1 << 1)
    assert verdicts.apic_routing("x\n[ 0.0] APIC: Switched APIC routing to: cluster x2apic\n") \
        == "cluster x2apic"
    assert verdicts.apic_routing("no such line") == "physical flat"
    with pytest.raises(ValueError):
        verdicts.expected_destination("bigsmp", 1)


def test_kdump_fails_on_a_stray_nmi_no_crash_kernel_or_no_report():
    case = PLATFORM_DIR / "v3-hpet-4cpu-kdump"
    rec = json.loads((case / "record.json").read_text())
    text = (case / "console.log").read_text()
    kinds = BAD_KINDS + LOCKUP_KINDS

    def judge(text=text, dump=rec["dump"], cpu=rec["cpu"], want=True):
        return verdicts.kdump(text, cpu, dump, want, kinds)
    assert judge().passed
    # A stray NMI reaching the crash kernel (a line as arch/x86/kernel/nmi.c
    # prints it), inserted after the crash kernel's first line
    at = text.index(verdicts.BOOT_LINE)
    at = text.index("\n", at) + 1
    stray = text[:at] + "[    0.300000][    C0] Uhhuh. NMI received for unknown reason 21 " \
        "on CPU 0.\n" + text[at:]
    v = judge(stray)
    assert not v.passed and "the crash kernel: " in v.reason, v.reason
    # No crash kernel: the console ends with the first kernel
    v = judge(text[:text.index(verdicts.BOOT_LINE)])
    assert not v.passed and "never booted" in v.reason
    # A machine reset after the panic: two kernels boot
    v = judge(text + text[text.index(verdicts.BOOT_LINE):])
    assert not v.passed and "reset" in v.reason
    # The report names another cpu, or the dump holds none
    assert "no hard lockup report for cpu 2" in judge(cpu=2).reason
    assert not judge(dump=[]).passed
    assert "no /proc/vmcore" in judge(dump=None).reason
    # Its own detector did not come back
    gone = re.sub(r"hpet_hld: enabled on channel \d+", "hpet_hld: not used", text)
    assert "did not come up" in judge(gone).reason
    assert judge(gone, want=False).passed


def test_untouched_with_nohz_full_checks_the_mask_the_kernel_set():
    before = {0: 4, 1: 4, 2: 4, 3: 4}
    after = {0: 19, 1: 19, 2: 19, 3: 4}
    assert verdicts.untouched(before, after, [3], [0, 1, 2], 6, 2.5, [],
                              boot_mask=[0, 1, 2]).passed
    v = verdicts.untouched(before, after, [3], [0, 1, 2], 6, 2.5, [], boot_mask=[0, 1, 2, 3])
    assert not v.passed and "watchdog_cpumask is [0, 1, 2, 3] at boot" in v.reason
