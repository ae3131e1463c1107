"""Shared fixtures for the harness's own tests: the built kernel, the
accelerator and a guest pool, all for one detector, the first of
--detectors (default: every detector; `make test` passes DETECTORS).
Matrix cases are not tests here: `python -m harness run` runs them
(harness/runner.py)."""
import os
import signal
import threading
from pathlib import Path

import pytest

from harness import accel as accel_mod
from harness import initramfs, kbuild, qemu
from harness.case_runner import GuestPool
from harness.errors import GuestError, HarnessError
from harness.paths import REPO


def pytest_addoption(parser):
    parser.addoption("--detectors", default=",".join(kbuild.DETECTORS),
                     help="detectors whose kernels the tests may use, comma separated; "
                     "the first is the one the guest tests boot (default: %(default)s)")
    parser.addoption("--harness-out", default=str(REPO / "out"),
                     help="where the guest tests keep their guests' directories")


def _interrupted(signum, frame):
    """SIGTERM (a CI job cancelled, a `timeout`) ends the session as Ctrl-C
    does: its guests killed, no further test started, exit status 2."""
    qemu.kill_all()
    raise KeyboardInterrupt(f"{signal.Signals(signum).name}: the session ends")


def pytest_configure(config):
    config.addinivalue_line("markers", "kernel: needs the built kernel (and maybe guests)")
    # Before any guest starts: harness.qemu installs its own handler only
    # where none is, and its SystemExit would be one failed test here.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupted)
    for d in config.getoption("--detectors").split(","):
        if d not in kbuild.DETECTORS:
            raise pytest.UsageError(f"--detectors: unknown detector {d!r}; known: "
                                    f"{', '.join(kbuild.DETECTORS)}")


@pytest.fixture(scope="session")
def detector(pytestconfig) -> str:
    return pytestconfig.getoption("--detectors").split(",")[0]


@pytest.fixture(scope="session")
def built(detector):
    try:
        return initramfs.build_guest(detector, os.environ.get("KERNEL_SRC"))
    except HarnessError as e:
        pytest.fail(f"the {detector} kernel: {e}", pytrace=False)


@pytest.fixture(scope="session")
def accel(built):
    kernel, initrd = built
    return accel_mod.choose_accel(kernel.bzimage, initrd, os.environ.get("HARNESS_ACCEL"))


@pytest.fixture(scope="session")
def pool(pytestconfig, detector, built, accel):
    p = GuestPool(accel, Path(pytestconfig.getoption("--harness-out")),
                  os.environ.get("KERNEL_SRC"), built={detector: built},
                  qemu=os.environ.get("QEMU") or None)
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


def pytest_collection_modifyitems(config, items):
    """`make unit` runs what needs no kernel: mark the rest by their fixtures."""
    for item in items:
        if {"built", "pool", "accel"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kernel)
