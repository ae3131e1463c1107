"""Bad input gets one clear error line and a non-zero exit, before any work."""
import subprocess
import sys

import pytest

from harness.paths import REPO


def harness(*args):
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


BAD_MATRIX = """
[[group]]
detector = "hpet"
cpu = [1, 2]
scenarios = ["boot"]
"""


@pytest.mark.parametrize("args, needle", [
    (["run", "--scenario", "no-such-scenario"], "unknown scenario 'no-such-scenario'"),
    (["run", "--scenario", "hard-lockup@4", "--cpus", "4"],
     "cpu 4 is outside the 4-cpu machine"),
    (["run", "--scenario", "hard-lockup@-1", "--cpus", "4"], "cpu selector '-1'"),
    (["run", "--scenario", "boot@1"], "scenario 'boot' takes no cpu"),
    (["run", "--scenario", "boot", "--cpus", "0"], "cpus=0: must be 1..255"),
    (["run", "--scenario", "boot", "--cpus", "2,300"], "cpus=300: must be 1..255"),
    (["run", "--scenario", "boot", "--cpus", "two"], "--cpus two: expected numbers"),
    (["run", "--scenario", "boot", "--iommu", "maybe"], "expected on or off, got 'maybe'"),
    (["run", "--scenario", "boot", "--cpus", "6", "--sockets", "4"],
     "cpus=6 cannot be split into sockets=4"),
    (["run", "--scenario", "boot", "--thresh", "61"], "watchdog_thresh=61: must be 0..60"),
    (["run", "--scenario", "boot", "--detector", "nope"], "unknown detector 'nope'"),
    (["run"], "say what to run"),
    (["run", "--matrix", "/nonexistent.toml"], "matrix file /nonexistent.toml does not exist"),
    (["run", "--matrix", "matrix/nightly.toml", "--sockets", "2"],
     "--sockets cannot be used with --matrix"),
    (["run", "--matrix", "matrix/nightly.toml", "--cpus", "3"],
     "no case of matrix/nightly.toml matches the selection"),
    (["run", "--matrix", "{bad_matrix}"], "unknown key 'cpu'"),
    (["parse", "/nonexistent.log"], "no such log file"),
])
def test_bad_input_one_line(args, needle, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD_MATRIX)
    out = tmp_path / "out"
    args = [a.replace("{bad_matrix}", str(bad)) for a in args]
    if args[0] == "run":
        args += ["--out", str(out)]
    res = harness(*args)
    assert res.returncode == 2, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("harness: error: ") and needle in lines[0], lines[0]
    assert not out.exists(), "bad input left an output directory behind"


def test_parse_any_file_does_not_crash(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 64 + b"\n[ 1.0] Kernel panic - not syncing: x\n")
    res = harness("parse", str(junk), "--json")
    assert res.returncode == 0, res.stderr
    assert '"kind": "panic"' in res.stdout
