"""Shared fixtures: the built kernel, the accelerator, the guest pool, and
the scenario cases (from HARNESS_CASES, written by `python -m harness run`,
or else the default matrix for the detectors in HARNESS_DETECTORS)."""
import json
import os
from pathlib import Path

import pytest

from harness import accel as accel_mod
from harness import kbuild, matrix
from harness.case_runner import GuestPool
from harness.errors import GuestError
from harness.paths import REPO

pytest_plugins = ["reporting"]

# HARNESS_DETECTORS=hpet,buddy: the detectors whose kernels the scenario
# tests run, side by side; the first one is the default kernel's.
DETECTORS = os.environ.get("HARNESS_DETECTORS", ",".join(kbuild.DETECTORS)).split(",")
DETECTOR = DETECTORS[0]
OUT = Path(os.environ.get("HARNESS_OUT", REPO / "out"))
DEFAULT_MATRIX = REPO / "matrix" / "nightly.toml"
RETRIES = int(os.environ.get("HARNESS_RETRIES", "1"))


def load_cases() -> list[matrix.Case]:
    path = os.environ.get("HARNESS_CASES")
    if path:
        return [matrix.Case.from_dict(d) for d in json.loads(Path(path).read_text())]
    return matrix.select(matrix.load(DEFAULT_MATRIX), detectors=DETECTORS)


CASES = load_cases()
_pool: GuestPool | None = None


def _session_pool(accel: str) -> GuestPool:
    global _pool
    if _pool is None:
        _pool = GuestPool(accel, OUT, os.environ.get("KERNEL_SRC"))
    return _pool


def build(detector: str):
    return _session_pool("tcg").build(detector)


@pytest.fixture(scope="session")
def built():
    return build(DETECTOR)


@pytest.fixture(scope="session")
def accel(built):
    kernel, initrd = built
    return accel_mod.choose_accel(kernel.bzimage, initrd)


@pytest.fixture(scope="session")
def pool(accel):
    p = _session_pool(accel)
    p.accel = accel
    yield p
    p.retire()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A guest that died or hung: show why, with its last console lines."""
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and isinstance(call.excinfo.value, GuestError):
        report.sections.append(("Captured stdout guest console tail",
                                call.excinfo.value.console_tail))


def pytest_configure(config):
    config.addinivalue_line("markers", "kernel: needs the built kernel (and maybe guests)")


def pytest_collection_modifyitems(config, items):
    """`make unit` runs what needs no kernel: mark the rest by their fixtures."""
    for item in items:
        if {"built", "pool", "accel"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kernel)
