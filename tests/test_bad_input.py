"""Bad input gets one clear error line and a non-zero exit, before any work."""
import subprocess
import sys

import pytest

from harness.paths import REPO


def harness(*args):
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, needle", [
    (["run", "--scenario", "no-such-scenario"], "unknown scenario 'no-such-scenario'"),
    (["run", "--scenario", "hard-lockup", "--cpus", "4", "--cpu", "4"],
     "--cpu 4 is outside the guest (cpus 0-3)"),
    (["run", "--scenario", "hard-lockup", "--cpus", "4", "--cpu", "-1"],
     "--cpu -1 is outside the guest"),
    (["run", "--scenario", "boot", "--cpus", "0"], "cpus=0: must be 1..255"),
    (["run", "--scenario", "boot", "--cpus", "300"], "cpus=300: must be 1..255"),
    (["run", "--scenario", "boot", "--cpus", "6", "--sockets", "4"],
     "cpus=6 cannot be split into sockets=4"),
    (["run", "--scenario", "boot", "--thresh", "61"], "watchdog_thresh=61: must be 0..60"),
    (["run", "--scenario", "boot", "--kernel", "/nonexistent/bzImage"],
     "kernel image /nonexistent/bzImage does not exist"),
    (["run", "--scenario", "boot", "--detector", "nope"], "unknown detector 'nope'"),
    (["parse", "/nonexistent.log"], "no such log file"),
])
def test_bad_input_one_line(args, needle):
    res = harness(*args)
    assert res.returncode == 2, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("harness: error: ") and needle in lines[0], lines[0]


def test_parse_any_file_does_not_crash(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 64 + b"\n[ 1.0] Kernel panic - not syncing: x\n")
    res = harness("parse", str(junk), "--json")
    assert res.returncode == 0, res.stderr
    assert '"kind": "panic"' in res.stdout
