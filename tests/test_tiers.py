"""The test tiers: the smoke matrix (`make test`) keeps every axis value,
scenario family and (detector, family) pair of the nightly matrix, and is
made of nightly cases; the time estimate a run prints first; and the exit
status `./test-kernel` gives `git bisect run`."""
import os
import subprocess
import sys
from dataclasses import asdict

import pytest

from harness import bench, matrix
from harness.paths import REPO

SMOKE = matrix.load(REPO / "matrix" / "smoke.toml")
NIGHTLY = matrix.load(REPO / "matrix" / "nightly.toml")


def coverage(cases: list[matrix.Case]) -> set[tuple]:
    """What a tier exercises: each machine axis value (with the detector as
    one more axis), each scenario family, each (detector, family) pair."""
    have: set[tuple] = set()
    for c in cases:
        have.add(("detector", c.detector))
        have.update(("axis", k, v) for k, v in asdict(c.spec).items())
        have.add(("family", c.scenario))
        have.add(("detector+family", c.detector, c.scenario))
    return have


# What the smoke tier leaves to the nightly one on purpose, and why: some
# (detector, family) pairs, and the debug kernel. Every family stays in
# smoke, and every axis value but the kernel's flavour.
SMOKE_LEAVES_OUT = {
    # The buddy detector's boundary sweep is a control (its own floor),
    # 160-210 s a sweep here; the HPET detector's sweep is in smoke.
    ("detector+family", "buddy", "boundary-sweep"),
    # The buddy detector as the control of suspend-resume (a lockup on
    # every CPU after S3) and unbooted-cpus (a guest of its own per
    # command line): it sends no NMI, so neither can show it touching a
    # CPU; the HPET detector's cases are in smoke.
    ("detector+family", "buddy", "suspend-resume"),
    ("detector+family", "buddy", "unbooted-cpus"),
    # The buddy detector's kdump is the control of the crash path alone (it
    # has no HPET channel to leave behind); the HPET detector's is in smoke.
    ("detector+family", "buddy", "kdump"),
    # The buddy detector is upstream's, the control here: smoke keeps its
    # hard, soft and all-CPU lockups; the kernel's test_lockup module on
    # it and a lockup of all CPUs but one (14 s a case) are nightly's.
    ("detector+family", "buddy", "all-but-one-locked"),
    ("detector+family", "buddy", "hard-lockup-test_lockup"),
    ("detector+family", "buddy", "soft-lockup-test_lockup"),
    # ... and its unknown-NMI and machine-stall controls (no NMI of its
    # own to mistake) and the LKDTM lockups on it (LKDTM's, not a
    # detector of ours, on trial); the HPET detector's are in smoke.
    ("detector+family", "buddy", "unknown-nmi"),
    ("detector+family", "buddy", "machine-stalls"),
    ("detector+family", "buddy", "lkdtm-hardlockup"),
    ("detector+family", "buddy", "lkdtm-softlockup"),
    ("detector+family", "buddy", "lkdtm-spinlockup"),
    ("detector+family", "buddy", "lkdtm-hung-task"),
    # The perf detector's kernel is the HPET detector's, and soft lockups
    # are the softlockup detector's, which that kernel shows in smoke.
    ("detector+family", "perf", "soft-lockup"),
    # Under TCG the perf detector has no PMU: its idle and all-locked show
    # only what its hard-lockup shows in smoke, that nothing is reported
    # (KVM runners with a vPMU run them nightly).
    ("detector+family", "perf", "idle"),
    ("detector+family", "perf", "all-locked"),
    # The debug flavour of the HPET kernel (lockdep, DEBUG_ATOMIC_SLEEP,
    # DEBUG_PREEMPT): a third kernel build, and its guests are slower; the
    # same scenarios run on the plain kernels in smoke.
    ("axis", "flavour", "debug"),
    # The kcsan flavour: a fourth kernel build, its guests slower still.
    ("axis", "flavour", "kcsan"),
}


def missing(smoke, nightly) -> list[tuple]:
    return sorted(coverage(nightly) - coverage(smoke) - SMOKE_LEAVES_OUT, key=repr)


def test_smoke_covers_every_axis_value_and_scenario_family_of_nightly():
    assert missing(SMOKE, NIGHTLY) == []


def test_the_coverage_check_sees_a_dropped_scenario_or_axis_value():
    # Without any one family, or without the only machine with some axis
    # value, the smoke tier would fail the check above.
    for family in {c.scenario for c in SMOKE}:
        gone = missing([c for c in SMOKE if c.scenario != family], NIGHTLY)
        assert ("family", family) in gone
    no_nohpet = [c for c in SMOKE if c.spec.hpet]
    assert ("axis", "hpet", False) in missing(no_nohpet, NIGHTLY)
    no_16 = [c for c in SMOKE if c.spec.cpus != 16]
    assert ("axis", "cpus", 16) in missing(no_16, NIGHTLY)


def test_what_smoke_leaves_out_is_only_pairs_whose_family_it_has():
    have = coverage(SMOKE)
    for what, *rest in SMOKE_LEAVES_OUT:
        assert (what, *rest) in coverage(NIGHTLY)
        if what == "detector+family":
            assert ("family", rest[1]) in have
        else:          # the one axis value: a kernel flavour, nothing else
            assert what == "axis" and rest[0] == "flavour"


def test_the_debug_and_kcsan_kernels_run_in_nightly_only():
    # The buddy-fallback flavour is in smoke: its detector-lost is the only
    # case here that sees a fallback take over (no PMU under TCG for perf).
    assert {c.spec.flavour for c in SMOKE} == {None, "buddy-fallback"}
    for flavour in ("debug", "kcsan"):
        cases = [c for c in NIGHTLY if c.spec.flavour == flavour]
        assert cases and {c.detector for c in cases} == {"hpet"}, flavour
        # Their scenarios all run in smoke too, on the plain kernels.
        assert {c.scenario for c in cases} <= {c.scenario for c in SMOKE}, flavour


def test_every_smoke_case_is_a_nightly_case():
    """Same id, same machine: a smoke failure is a nightly failure, and
    `harness compare` lines the two tiers' results up."""
    nightly = {c.id: c for c in NIGHTLY}
    for c in SMOKE:
        assert c.id in nightly, c.id
        assert nightly[c.id] == c, c.id


def test_smoke_is_a_small_fraction_of_nightly():
    # The estimate of both with the default table: the tier is there to be fast.
    model = bench.CostModel()
    smoke, nightly = bench.estimate(SMOKE, model), bench.estimate(NIGHTLY, model)
    assert len(SMOKE) < len(NIGHTLY) / 3
    assert smoke.seconds < nightly.seconds / 3


# --- the estimate -----------------------------------------------------------

def group(**kw):
    return matrix.name_cases(matrix.expand_group("test", {"detector": "hpet", **kw}))


def test_estimate_counts_a_boot_per_machine_and_after_a_guest_ending_case():
    cases = group(cpus=4, scenarios=["boot", "hard-lockup@1", "lkdtm-hardlockup@1",
                                     "hard-lockup@2"]) + group(cpus=2, scenarios=["idle"])
    e = bench.estimate(cases, bench.CostModel())
    # 4 vCPUs: a boot, then one after LKDTM ends the guest; 2 vCPUs: a boot.
    assert e.boots == 3
    table = bench.DEFAULT_RUN_S
    assert e.seconds == pytest.approx(
        2 * bench.DEFAULT_BOOT_S[4] + bench.DEFAULT_BOOT_S[2] + table[("hpet", "boot")]
        + 2 * table[("hpet", "hard-lockup")] + table[("hpet", "lkdtm-hardlockup")]
        + table[("hpet", "idle")])
    assert e.measured == 0 and "default table" in e.line()


def test_estimate_from_results_uses_what_was_measured():
    model = bench.cost_model(REPO / "tests" / "data" / "results-sample.json", required=True)
    # That run booted 2-vCPU guests in 2.76 s, and held its hard lockups ~8 s.
    assert model.boot_s(2) == pytest.approx(2.76)
    run_s, measured = model.run_s("hpet", "hard-lockup", 8)
    assert measured and 8.0 <= run_s <= 8.2
    cases = group(cpus=8, scenarios=["boot", "hard-lockup@3"])
    e = bench.estimate(cases, model)
    # The boot case's time went to the boot (8 vCPUs: 6.94 s); beyond the
    # boot it costs what the table says.
    assert e.measured == 1 and "results-sample.json" in e.line()
    assert e.seconds == pytest.approx(6.94 + run_s + bench.DEFAULT_RUN_S[("hpet", "boot")])


def test_estimate_spreads_whole_machines_over_jobs():
    cases = group(cpus=[2, 4], scenarios=["boot", "idle"])
    one, two = (bench.estimate(cases, bench.CostModel(), j) for j in (1, 2))
    per_machine = [bench.DEFAULT_BOOT_S[n] + bench.DEFAULT_RUN_S[("hpet", "boot")]
                   + bench.DEFAULT_RUN_S[("hpet", "idle")] for n in (2, 4)]
    assert one.seconds == pytest.approx(sum(per_machine))
    assert two.seconds == pytest.approx(max(per_machine))


def test_estimate_from_a_file_that_is_not_results_is_bad_input(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    proc = subprocess.run([sys.executable, "-m", "harness", "run",
                           "--matrix", "matrix/smoke.toml", "--estimate-from", str(bad),
                           "--out", str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"harness: error: {bad}: not a results.json")
    assert not (tmp_path / "out").exists()


# --- git bisect run ---------------------------------------------------------

def run_test_kernel(tmp_path, kernel_src):
    env = dict(os.environ, KERNEL_SRC=str(kernel_src), HARNESS_CACHE=str(tmp_path / "cache"),
               TEST_KERNEL_OUT=str(tmp_path / "out"))
    return subprocess.run([str(REPO / "test-kernel")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_bisect_a_tree_that_is_no_kernel_is_bad_input(tmp_path):
    (tmp_path / "tree").mkdir()
    proc = run_test_kernel(tmp_path, tmp_path / "tree")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        f"harness: error: KERNEL_SRC={tmp_path / 'tree'} is not a kernel source tree"


def test_bisect_a_tree_that_does_not_build_is_skipped(tmp_path):
    # A tree with a kernel's top-level files whose make fails: the real
    # build path (configure, make) fails, and that is 125 for git bisect.
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "Kconfig").write_text("mainmenu \"not quite a kernel\"\n")
    (tree / "Makefile").write_text("%:\n\t@echo 'this commit does not build' >&2; exit 1\n")
    proc = run_test_kernel(tmp_path, tree)
    assert proc.returncode == 125, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("harness: error: the hpet kernel does not build (exit 125")
    assert "allnoconfig" in last
    assert not (tmp_path / "out" / "cases.json").exists()
