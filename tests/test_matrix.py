"""The matrix file format and its expansion into cases."""
import re

import pytest

from harness import contract_scenarios as cs
from harness import matrix
from harness.errors import HarnessError
from harness.paths import REPO


def group(**kw):
    return matrix.name_cases(matrix.expand_group("test", {"detector": "hpet", **kw}))


def test_default_matrix_loads_with_unique_ids():
    cases = matrix.load(REPO / "matrix" / "nightly.toml")
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)) >= 48
    assert {c.detector for c in cases} == {"hpet", "buddy", "perf"}


def test_lists_cross_and_scalars_apply_to_all():
    cases = group(cpus=[1, 4], iommu=[False, True], thresh=5, scenarios=["boot"])
    assert [(c.spec.cpus, c.spec.iommu) for c in cases] == \
        [(1, False), (1, True), (4, False), (4, True)]
    assert all(c.spec.watchdog_thresh == 5 for c in cases)


def test_detector_defaults_fill_in_and_a_group_overrides_them():
    hpet, = group(cpus=2, scenarios=["boot"])
    assert (hpet.spec.hpet_msi, hpet.spec.hpet_timers, hpet.spec.nmi_watchdog) == \
        (True, 8, "hpet")
    plain, = group(cpus=2, hpet_msi=False, nmi_watchdog="default", scenarios=["boot"])
    assert (plain.spec.hpet_msi, plain.spec.nmi_watchdog) == (False, None)


@pytest.mark.parametrize("selector, cpus", [
    ("all", [0, 1, 2, 3, 4, 5, 6, 7]), ("first", [0]), ("middle", [4]),
    ("last", [7]), ("spread", [0, 4, 7]), ("3", [3]), ("", [7])])
def test_cpu_selectors(selector, cpus):
    item = "hard-lockup" + (f"@{selector}" if selector else "")
    assert [c.cpu for c in group(cpus=8, scenarios=[item])] == cpus


def test_two_cpu_scenarios_skip_one_cpu_machines():
    cases = group(cpus=[1, 2], scenarios=["boot", "all-locked"])
    assert [(c.spec.cpus, c.scenario) for c in cases] == \
        [(1, "boot"), (2, "boot"), (2, "all-locked")]


def test_repeats_get_numbered_ids():
    ids = [c.id for c in group(cpus=2, scenarios=["enabled", "idle", "enabled"])]
    assert ids == ["hpet/2cpu-noiommu/enabled", "hpet/2cpu-noiommu/idle",
                   "hpet/2cpu-noiommu/enabled#2"]


def test_cases_survive_the_json_round_trip():
    for c in group(cpus=4, sockets=2, cmdline="tsc=reliable",
                   scenarios=["hard-lockup@spread"]):
        assert matrix.Case.from_dict(c.to_dict()) == c


def test_reproduce_command_names_every_non_default_axis():
    c, = group(cpus=4, sockets=2, panic=True, cmdline="tsc=reliable",
               scenarios=["hard-lockup@3"])
    assert c.reproduce() == ("python -m harness run --detector hpet --cpus 4 --iommu off "
                             "--sockets 2 --panic on --cmdline 'tsc=reliable' "
                             "--scenario hard-lockup@3")


@pytest.mark.parametrize("kw, needle", [
    ({"cpus": [True]}, "cpus = True: expected int"),
    ({"iommu": "yes"}, "unknown iommu value 'yes'; known: off, described, undescribed"),
    ({"apic": "x3apic"}, "unknown apic value 'x3apic'; known: xapic, x2apic"),
    ({"comparator": "strict"}, "unknown comparator value 'strict'; known: qemu, hardware"),
    ({"iommu": 1}, "unknown iommu value 1"),
    ({"cpus": []}, "cpus is an empty list"),
    ({"cpu": 2}, "unknown key 'cpu'"),
    ({"scenarios": []}, "needs a non-empty list 'scenarios'"),
    ({"scenarios": ["hard-lockup@9"], "cpus": 4}, "cpu 9 is outside the 4-cpu machine"),
    ({"scenarios": ["hard-lockup@most"]}, "cpu selector 'most'"),
    ({"scenarios": ["idle@1"]}, "scenario 'idle' takes no cpu"),
    ({"detector": "pmu"}, "unknown detector 'pmu'"),
    ({"cpus": 3, "sockets": 2}, "cpus=3 cannot be split"),
])
def test_bad_groups_name_the_key_or_value(kw, needle):
    kw.setdefault("scenarios", ["boot"])
    with pytest.raises(HarnessError, match=rf"^g: .*{re.escape(needle)}"):
        matrix.expand_group("g", {"detector": "hpet", **kw})


@pytest.mark.parametrize("text, needle", [
    ("[[group]\n", "not valid TOML"),
    ("title = 'x'\n", "unknown top-level key"),
    ("", "no [[group]] tables"),
])
def test_bad_files(tmp_path, text, needle):
    f = tmp_path / "m.toml"
    f.write_text(text)
    with pytest.raises(HarnessError) as e:
        matrix.load(f)
    assert needle in str(e.value)


GROUP = "[[group]]\ndetector = 'hpet'\nscenarios = ['boundary-sweep', 'soak']\n"


@pytest.mark.parametrize("table, needle", [
    ("[scenario_args.boundary-sweep]\nper_length = 0\n", "per_length = 0: must be more than 0"),
    ("[scenario_args.boundary-sweep]\nper_length = 2.5\n", "expected a whole number"),
    ("[scenario_args.boundary-sweep]\nper_length = 'few'\n", "expected a whole number"),
    ("[scenario_args.boundary-sweep]\nsections = 4\n",
     "scenario 'boundary-sweep' has no parameter 'sections'; known: per_length"),
    ("[scenario_args.idle]\nperiods = 2\n", "scenario 'idle' has no parameter 'periods'"),
    ("[scenario_args.sweep]\nper_length = 4\n", "unknown scenario 'sweep'"),
    ("scenario_args = 4\n", "scenario_args must be a table"),
])
def test_bad_scenario_args_name_what_is_wrong(tmp_path, table, needle):
    f = tmp_path / "m.toml"
    f.write_text(table + GROUP)
    with pytest.raises(HarnessError) as e:
        matrix.scenario_args(f)
    assert str(e.value).startswith(f"{f}: ") and needle in str(e.value)


def test_scenario_args_reach_the_reproduce_line(tmp_path):
    f = tmp_path / "m.toml"
    f.write_text("[scenario_args.boundary-sweep]\nper_length = 3\n"
                 "[scenario_args.soak]\nseconds = 30\n" + GROUP)
    got = matrix.scenario_args(f)
    assert got == {"boundary-sweep": {"per_length": 3}, "soak": {"seconds": 30}}
    sweep = next(c for c in matrix.load(f) if c.scenario == "boundary-sweep")
    assert sweep.reproduce(got["boundary-sweep"]).endswith(
        "--scenario boundary-sweep --scenario-arg boundary-sweep.per_length=3")
    assert "--scenario-arg" not in sweep.reproduce()


def test_the_smoke_sweep_is_shorter_than_the_nightly_one():
    smoke = matrix.scenario_args(REPO / "matrix" / "smoke.toml")
    assert smoke["boundary-sweep"]["per_length"] < cs.SWEEP_PER_LENGTH
    assert matrix.scenario_args(REPO / "matrix" / "nightly.toml") == {}


def test_select_filters_combine():
    cases = matrix.load(REPO / "matrix" / "nightly.toml")
    got = matrix.select(cases, detectors=["buddy"], cpus=[4], iommu=[True],
                        scenarios=["hard-lockup"])
    assert got and all(c.detector == "buddy" and c.spec.cpus == 4 and c.spec.iommu
                       and c.scenario == "hard-lockup" for c in got)


# --- the APIC x IOMMU x comparator table -----------------------------------------

def test_paths_cover_every_combination_of_the_named_axes():
    import itertools
    from harness import expectations, machine
    combos = set(itertools.product(machine.APIC_MODES, machine.IOMMU_MODES,
                                   machine.COMPARATOR_RULES))
    assert set(expectations.PATHS) == combos
    for (apic, iommu, cmp), path in expectations.PATHS.items():
        spec = machine.MachineSpec(**machine.APIC_MODES[apic], **machine.IOMMU_MODES[iommu],
                                   **machine.COMPARATOR_RULES[cmp]).validate()
        assert expectations.hpet_path(spec) is path
        assert path.outcome in ("enabled", "declines", "disabled")
        assert (path.chip is None) == (path.outcome == "declines")
        assert (path.remap is None) == (iommu == "off")


def test_readme_has_exactly_the_expectations_table():
    """The README's table is generated from expectations.PATHS: regenerate
    it (python -c 'from harness import expectations as e; print(e.paths_table())')
    when PATHS changes."""
    from harness import expectations
    text = (REPO / "README.md").read_text()
    start = text.index("<!-- paths-table: generated from harness/expectations.py")
    start = text.index("\n", start) + 1
    end = text.index("<!-- /paths-table -->", start)
    assert text[start:end].strip() == expectations.paths_table()


def test_named_axes_spell_their_values_and_old_spellings_still_work():
    (c,) = group(cpus=2, apic="x2apic", iommu="undescribed", comparator="hardware",
                 scenarios=["boot"])
    assert (c.spec.x2apic, c.spec.iommu, c.spec.iommu_hpet, c.spec.hpet_strict_comparator) \
        == (True, True, False, True)
    assert "--apic x2apic" in c.reproduce() and "--iommu undescribed" in c.reproduce()
    assert "--comparator hardware" in c.reproduce()
    assert [x.spec.iommu_mode for x in group(cpus=2, iommu=[False, True], scenarios=["boot"])] \
        == ["off", "described"]
    x2 = matrix.load(REPO / "matrix" / "nightly.toml")
    got = matrix.select(x2, apic=["x2apic"], iommu=["described"], scenarios=["irq-path"])
    assert sorted(c.spec.cpus for c in got if c.spec.comparator == "qemu") == [1, 2, 4, 8, 16]
