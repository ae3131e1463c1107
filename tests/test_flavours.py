"""Kernel flavours (harness/detectors.py FLAVOURS): a flavour's fragments go
on top of the detector's, its kernel is a build of its own, and a machine
names it (matrix key `flavour`, `--flavour`), which shows in case ids,
reproduce lines and the run's table of kernels."""
from pathlib import Path

import pytest

from harness import detectors, kbuild, matrix, runner
from harness.errors import HarnessError
from harness.machine import MachineSpec
from harness.paths import KERNEL_CONFIG_DIR


def test_a_flavour_adds_its_fragments_to_the_detectors():
    plain = [p.name for p in kbuild.fragments_for("hpet")]
    assert [p.name for p in kbuild.fragments_for("hpet", "debug")] == [*plain, "debug.config"]
    assert kbuild.fragments_for("hpet", "default") == kbuild.fragments_for("hpet")
    # perf runs on the HPET kernel: in a flavour, on its flavour.
    assert kbuild.fragments_for("perf", "debug") == kbuild.fragments_for("hpet", "debug")
    for f in detectors.FLAVOURS.values():
        assert all((KERNEL_CONFIG_DIR / name).is_file() for name in f.fragments)


def test_the_debug_fragment_asks_for_the_checks_and_what_they_need():
    text = (KERNEL_CONFIG_DIR / "debug.config").read_text()
    for option in ("CONFIG_PROVE_LOCKING=y", "CONFIG_DEBUG_ATOMIC_SLEEP=y",
                   "CONFIG_DEBUG_PREEMPT=y", "CONFIG_PREEMPT=y",
                   "# CONFIG_DEBUG_LOCKDEP is not set"):
        assert option + "\n" in text


def test_the_fallback_a_flavour_claims_is_the_one_its_fragments_ask_for():
    """detector-lost expects the fallback of Flavour.fallback: buddy only if
    the flavour's fragments make the kernel prefer it (the kconfig check
    then proves the build honours that), perf otherwise."""
    assert detectors.fallback(None) == detectors.fallback("default") == "perf"
    for f in detectors.FLAVOURS.values():
        text = "".join((KERNEL_CONFIG_DIR / name).read_text() for name in f.fragments)
        prefers_buddy = "CONFIG_HARDLOCKUP_DETECTOR_PREFER_BUDDY=y\n" in text
        assert detectors.fallback(f.name) == ("buddy" if prefers_buddy else "perf"), f.name
    assert detectors.fallback("buddy-fallback") == "buddy"


def test_each_flavour_is_a_kernel_build_of_its_own():
    plain, _, _ = kbuild.kernel_key("hpet")
    assert kbuild.kernel_key("hpet", flavour="default")[0] == plain
    debug, _, _ = kbuild.kernel_key("hpet", flavour="debug")
    assert debug != plain
    assert debug != kbuild.kernel_key("buddy", flavour="debug")[0]


def test_an_unknown_flavour_is_one_error():
    with pytest.raises(HarnessError, match="^unknown flavour 'ubsan'; known: default, debug, kcsan, buddy-fallback$"):
        kbuild.fragments_for("hpet", "ubsan")
    with pytest.raises(HarnessError, match="unknown flavour 'ubsan'"):
        MachineSpec(flavour="ubsan").validate()


def group(**kw):
    return matrix.name_cases(matrix.expand_group("test", {"detector": "hpet", "cpus": 4, **kw}))


def test_a_group_in_a_flavour_names_it_in_ids_guests_and_reproduce_lines():
    (debug,) = group(flavour="debug", scenarios=["boot"])
    (plain,) = group(scenarios=["boot"])
    assert debug.spec.flavour == "debug" and plain.spec.flavour is None
    assert debug.id == "hpet/4cpu-noiommu-debug/boot" and plain.id == "hpet/4cpu-noiommu/boot"
    assert debug.guest_key != plain.guest_key          # never the same guest
    assert debug.reproduce().endswith("--cpus 4 --iommu off --flavour debug --scenario boot")
    assert "--flavour" not in plain.reproduce()
    assert group(flavour="default", scenarios=["boot"]) == [plain]
    assert matrix.Case.from_dict(debug.to_dict()) == debug


def test_select_by_flavour():
    cases = group(flavour=["default", "debug"], scenarios=["boot", "idle"])
    assert [c.id for c in matrix.select(cases, flavours=["debug"])] == [
        "hpet/4cpu-noiommu-debug/boot", "hpet/4cpu-noiommu-debug/idle"]
    assert {c.spec.flavour for c in matrix.select(cases, flavours=["default"])} == {None}
    with pytest.raises(HarnessError, match="unknown flavour value 'x'; known: default, debug"):
        matrix.select(cases, flavours=["x"])


def test_a_run_builds_each_detector_in_each_flavour_it_boots():
    cases = group(flavour=["default", "debug"], scenarios=["boot"]) + \
        matrix.name_cases(matrix.expand_group("test", {"detector": "buddy", "scenarios": ["boot"]}))
    request = runner.RunRequest(tuple(cases), Path("x"))
    assert request.kernels == [("hpet", None), ("hpet", "debug"), ("buddy", None)]
    assert request.detectors == ["hpet", "buddy"]
    assert [detectors.with_flavour(*k) for k in request.kernels] == ["hpet", "hpet+debug", "buddy"]
