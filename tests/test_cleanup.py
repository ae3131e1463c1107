"""Killing the harness mid-run leaves no QEMU and no temporary file behind.

Starts a real `python -m harness run` with its own output directory, waits
until its QEMU is up, signals the harness, and looks for any QEMU process
whose command line names that directory, and for temporary files: a report
half-written in the output directory (written to a .tmp, then renamed), or
anything new in the system's temporary directory (the guests' sockets are
abstract, so there should be none).
"""
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from harness.paths import REPO


def _qemus_for(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"qemu-system-x86_64") and \
                any(marker.encode() in a for a in cmd):
            pids.append(int(d.name))
    return pids


def _tmp_entries() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).iterdir()}


def _wait(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=lambda s: s.name)
def test_no_qemu_or_temp_file_survives_the_harness(sig, tmp_path, built):
    out = tmp_path / "run"
    tmp_before = _tmp_entries()
    # As from a terminal: SIGINT deliverable even if we were started in the
    # background by a shell without job control (which ignores it, and the
    # ignoring is inherited).
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", "--scenario", "idle",
                             "--cpus", "2", "--out", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert _wait(lambda: _qemus_for(str(out)), 120), "QEMU never started"
        # Let the guest get going so the signal lands mid-run.
        assert _wait(lambda: any(out.glob("guests/*/console.log")) and
                     any(p.stat().st_size > 0 for p in out.glob("guests/*/console.log")), 60)
        proc.send_signal(sig)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _wait(lambda: not _qemus_for(str(out)), 20), \
        f"QEMU left running after {sig.name}: {_qemus_for(str(out))}"
    assert proc.returncode != 0
    half_written = list(out.rglob("*.tmp"))
    assert not half_written, f"half-written files left: {half_written}"
    # pytest's own tmp_path lives there too; it existed before the harness ran.
    left = _tmp_entries() - tmp_before
    assert not left, f"left in {tempfile.gettempdir()}: {left}"
