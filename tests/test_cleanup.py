"""Killing the harness mid-run leaves no QEMU and no temporary file behind.

Starts a real `python -m harness run` with its own output directory, waits
until its QEMU is up, signals the harness, and looks for any QEMU process
whose command line names that directory, and for temporary files: a report
half-written in the output directory (written to a .tmp, then renamed), or
anything in the temporary directory (the guests' sockets are abstract, so
there should be none). The harness gets a temporary directory of its own
(TMPDIR): the host's /tmp also holds what other builds on it leave there.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.paths import REPO


def processes():
    """(pid, parent pid, argv) of every process we may read."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        yield int(d.name), ppid, argv


def qemus_for(marker: str) -> list[int]:
    return [pid for pid, _, argv in processes()
            if argv and argv[0].endswith(b"qemu-system-x86_64")
            and any(marker.encode() in a for a in argv)]


def wait_until(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


# jobs 2: two machines, each on a worker process of the runner.
@pytest.mark.parametrize("jobs", [1, 2], ids=lambda j: f"jobs{j}")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=lambda s: s.name)
def test_no_qemu_or_temp_file_survives_the_harness(sig, jobs, tmp_path, built):
    out, tmp = tmp_path / "run", tmp_path / "tmp"
    tmp.mkdir()
    # As from a terminal: SIGINT deliverable even if we were started in the
    # background by a shell without job control (which ignores it, and the
    # ignoring is inherited).
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", "--scenario", "idle",
                             "--cpus", "2" if jobs == 1 else "1,2", "--jobs", str(jobs),
                             "--out", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, TMPDIR=str(tmp)),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert wait_until(lambda: qemus_for(str(out)), 120), "QEMU never started"
        # Let the guest get going so the signal lands mid-run.
        assert wait_until(lambda: any(out.glob("guests/*/console.log")) and
                     any(p.stat().st_size > 0 for p in out.glob("guests/*/console.log")), 60)
        proc.send_signal(sig)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert wait_until(lambda: not qemus_for(str(out)), 20), \
        f"QEMU left running after {sig.name}: {qemus_for(str(out))}"
    assert proc.returncode != 0
    half_written = list(out.rglob("*.tmp"))
    assert not half_written, f"half-written files left: {half_written}"
    left = [p.name for p in tmp.iterdir()]
    assert not left, f"left in the harness's TMPDIR: {left}"


def test_an_interrupted_run_reports_the_cases_it_finished(tmp_path, built):
    """Ctrl-C after the first case: its guest is stopped, and results.json
    and the reports have the finished case, the run marked interrupted."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", "--no-progress",
                             "--scenario", "boot,idle", "--cpus", "1,2", "--jobs", "1",
                             "--out", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert wait_until(lambda: (out / "run.log").is_file() and
                          "[1/4 " in (out / "run.log").read_text(), 180), "no case finished"
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert wait_until(lambda: not qemus_for(str(out)), 20), qemus_for(str(out))
    summary = json.loads((out / "results.json").read_text())
    assert 1 <= len(summary["cases"]) < 4
    assert summary["cases"][0]["id"] == "hpet/1cpu-noiommu/boot"
    assert summary["meta"]["interrupted"].endswith("of 4 cases")
    assert "interrupted" in (out / "report.html").read_text()


def workers_of(pid: int) -> list[int]:
    """The runner's worker processes (multiprocessing's spawn children)."""
    return [child for child, ppid, argv in processes()
            if ppid == pid and any(b"spawn_main" in a for a in argv)]


def test_a_killed_worker_ends_the_run_with_one_error(tmp_path, built):
    """A worker killed mid-case: the runner notices within its deadline,
    says so in one line, exits 1, and no QEMU is left."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", "--no-progress",
                             "--scenario", "soak", "--soak-seconds", "300", "--cpus", "1,2",
                             "--jobs", "2", "--out", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: len(workers_of(proc.pid)) == 2, 60), "no workers"
        assert wait_until(lambda: len(qemus_for(str(out))) >= 1, 120), "QEMU never started"
        os.kill(workers_of(proc.pid)[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    lines = [line for line in err.splitlines() if line.startswith("harness: error:")]
    assert len(lines) == 1 and "died (exit -9) before finishing its cases" in lines[0], err
    assert wait_until(lambda: not qemus_for(str(out)), 20), qemus_for(str(out))


def test_sigterm_ends_a_pytest_session_and_its_guests(tmp_path, built, detector):
    """`make test` cancelled (SIGTERM to pytest) while a test's guest runs:
    pytest stops there (exit 2, interrupted), with no QEMU left and no
    further test started; not one failed test and on to the next."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "tests/test_soak.py",
                             "--detectors", detector, "--harness-out", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        assert wait_until(lambda: qemus_for(str(out)), 120), "QEMU never started"
        first = set(qemus_for(str(out)))
        proc.send_signal(signal.SIGTERM)
        text, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, text[-2000:]
    assert "SIGTERM: the session ends" in text, text[-2000:]
    assert wait_until(lambda: not qemus_for(str(out)), 20), qemus_for(str(out))
    # Only the guest that ran when the signal came was ever started.
    assert len(list(out.glob("guests/*"))) <= len(first), sorted(out.glob("guests/*"))
