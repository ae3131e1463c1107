"""Which QEMU a run uses: the patched build by default, QEMU=path for
another one; a case whose machine needs what that binary lacks is skipped
by name, with the reason, and the reports name the binary and its version.
Real runs of `harness run` (one small guest on Debian's QEMU 7.2)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import qemu_build
from harness.machine import MachineSpec
from harness.paths import REPO
from harness.qemu import machine_lacks

STOCK_QEMU = "/usr/bin/qemu-system-x86_64"


def _run(tmp_path, env_extra, *args):
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "-m", "harness", "run", "--jobs", "1",
                           "--no-progress", "--out", str(tmp_path / "out"), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.kernel
def test_stock_qemu_runs_what_it_can_and_skips_the_rest_by_name(built, tmp_path):
    if not Path(STOCK_QEMU).is_file():
        pytest.skip(f"{STOCK_QEMU} not installed")
    res = _run(tmp_path, {"QEMU": STOCK_QEMU}, "--cpus", "2", "--apic", "xapic,x2apic",
               "--iommu", "off,undescribed", "--scenario", "boot")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    outcomes = {c["id"]: (c["outcome"], c["reason"]) for c in summary["cases"]}
    assert outcomes["hpet/2cpu-noiommu/boot"][0] == "pass", outcomes
    for cid in ("hpet/2cpu-noiommu-x2apic/boot", "hpet/2cpu-iommu-x2apic-hpet-undescribed/boot"):
        assert outcomes[cid][0] == "skip", outcomes
        assert "x2apic needs QEMU 9.0 or newer under TCG" in outcomes[cid][1]
    outcome, reason = outcomes["hpet/2cpu-iommu-hpet-undescribed/boot"]
    assert outcome == "skip" and "too old" in reason and "hpet-scope" in reason, reason
    # Named on stderr, in the KTAP (SKIP directive) and in the HTML report,
    # with the QEMU that ran.
    assert "harness: SKIP hpet/2cpu-noiommu-x2apic/boot: skipped: x2apic needs" in res.stderr
    assert "ok 1 boot # SKIP skipped: x2apic needs QEMU 9.0" in res.stdout
    version = ".".join(map(str, qemu_build.check(STOCK_QEMU).version))
    assert summary["meta"]["qemu"] == [f"{STOCK_QEMU} (QEMU {version}; qemu/patches "
                                       "features: none)"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert f"QEMU {version}" in html and STOCK_QEMU in html


@pytest.mark.kernel
def test_the_default_qemu_is_the_patched_build(built, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "QEMU"}
    res = subprocess.run([sys.executable, "-m", "harness", "run", "--cpus", "1",
                          "--scenario", "boot", "--no-progress", "--out", str(tmp_path / "out")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    built_qemu = qemu_build.build_qemu()
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    assert summary["meta"]["qemu"] == [
        f"{built_qemu.binary} (QEMU 10.0.2; qemu/patches features: "
        f"{', '.join(qemu_build.FEATURES)})"]
    cmdline = next((tmp_path / "out" / "guests").glob("*/qemu-cmdline.txt")).read_text()
    assert cmdline.startswith(str(built_qemu.binary) + " ")


def test_what_each_machine_needs_of_stock_qemu():
    if not Path(STOCK_QEMU).is_file():
        pytest.skip(f"{STOCK_QEMU} not installed")
    assert machine_lacks(MachineSpec(), "tcg", STOCK_QEMU) is None
    assert machine_lacks(MachineSpec(x2apic=True), "kvm", STOCK_QEMU) is None
    assert "x2apic needs QEMU 9.0" in machine_lacks(MachineSpec(x2apic=True), "tcg", STOCK_QEMU)
    described = machine_lacks(MachineSpec(iommu=True), "tcg", STOCK_QEMU)
    assert "too old" in described and "hpet-remap, cfi" in described
    strict = machine_lacks(MachineSpec(hpet_strict_comparator=True), "tcg", STOCK_QEMU)
    assert "strict-comparator" in strict


def test_a_skipped_case_is_named_in_every_report_and_fails_nothing():
    from harness import report
    from harness.records import RunSummary
    reason = "skipped: x2apic needs QEMU 9.0 or newer under TCG (x2APIC, intel-iommu eim=on)"
    summary = {"meta": {"qemu": [f"{STOCK_QEMU} (QEMU 7.2.19; qemu/patches features: none)"]},
               "cases": [{"id": "hpet/2cpu-noiommu/boot", "detector": "hpet",
                          "machine": "2cpu-noiommu", "scenario": "boot", "outcome": "pass",
                          "reason": "clean boot"},
                         {"id": "hpet/2cpu-noiommu-x2apic/boot", "detector": "hpet",
                          "machine": "2cpu-noiommu-x2apic", "scenario": "boot",
                          "outcome": "skip", "reason": reason}]}
    summary = RunSummary.from_dict(summary)
    assert summary.exit_status == 0
    ktap = report.ktap(summary)
    assert f"  ok 1 boot # SKIP {reason}" in ktap and "skip:1" in ktap
    page = report.html(summary)
    assert "hpet/2cpu-noiommu-x2apic/boot" in page and "x2apic needs QEMU 9.0" in page
    assert "QEMU 7.2.19" in page
