"""Shared fixtures: the built kernel, the accelerator, and a guest pool.

Consecutive cases on the same machine spec share one booted guest (a boot
under TCG costs seconds); a case that kills its guest makes the pool boot a
fresh one for the next case.
"""
import json
import os
from pathlib import Path

import pytest

from harness import accel as accel_mod
from harness import initramfs, kbuild
from harness.errors import GuestError
from harness.paths import REPO
from harness.qemu import Guest

# HARNESS_DETECTORS=hpet,buddy: the detectors whose kernels the scenario
# tests run, side by side; the first one is the default kernel's.
DETECTORS = os.environ.get("HARNESS_DETECTORS", ",".join(kbuild.DETECTORS)).split(",")
DETECTOR = DETECTORS[0]
OUT = Path(os.environ.get("HARNESS_OUT", REPO / "out"))
_results: list[dict] = []
_built: dict = {}


def build(detector: str):
    """The kernel and initramfs for a detector, built once per session."""
    if detector not in _built:
        kernel = kbuild.build_kernel(detector, os.environ.get("KERNEL_SRC"))
        _built[detector] = kernel, initramfs.build_initramfs(kernel, kernel.build_dir.parent)
    return _built[detector]


@pytest.fixture(scope="session")
def built():
    return build(DETECTOR)


@pytest.fixture(scope="session")
def accel(built):
    kernel, initrd = built
    return accel_mod.choose_accel(kernel.bzimage, initrd)


class GuestPool:
    def __init__(self, accel):
        self.accel = accel
        self.guest: Guest | None = None
        self.detector: str | None = None
        self.boots = 0

    def get(self, detector: str, spec) -> Guest:
        g = self.guest
        if g is not None and self.detector == detector and g.spec == spec and g.alive():
            return g
        self.stop()
        kernel, initrd = build(detector)
        self.boots += 1
        workdir = OUT / "guests" / f"{detector}-{spec.label()}-boot{self.boots}"
        g = Guest(spec, kernel.bzimage, initrd, workdir, self.accel).start()
        self.guest, self.detector = g, detector
        g.wait_booted()
        return g

    def stop(self):
        if self.guest is not None:
            self.guest.stop()
            self.guest = None


@pytest.fixture(scope="session")
def pool(accel):
    p = GuestPool(accel)
    yield p
    p.stop()


@pytest.fixture(scope="session")
def record():
    def add(result, detector):
        _results.append({"detector": detector, **result.to_dict()})
    yield add
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(_results, indent=1))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A guest that died or hung: show why, with its last console lines."""
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and isinstance(call.excinfo.value, GuestError):
        report.sections.append(("guest console tail", call.excinfo.value.console_tail))


def pytest_terminal_summary(terminalreporter):
    rows = [r for r in _results if r["measurements"]]
    if not rows:
        return
    terminalreporter.section("scenario measurements")
    for r in rows:
        m = r["measurements"]
        keys = ("boot_seconds", "settle_seconds", "kernel_boot_seconds", "latency_s", "nmi_per_cpu_per_s",
                "tsc_error_ns", "knock_on_cpus")
        shown = ", ".join(f"{k}={m[k]}" for k in keys if k in m)
        terminalreporter.write_line(
            f"{'PASS' if r['passed'] else 'FAIL'} {r['detector']:<6} {r['machine']:<18} "
            f"{r['scenario']:<28} {shown}")
