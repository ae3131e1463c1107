"""Bad input gets one clear error line and a non-zero exit, before any work."""
import os
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

BAD_FLAVOUR_MATRIX = """
[[group]]
name = "debug?"
detector = "hpet"
flavour = "prove-locking"
scenarios = ["boot"]
"""

BAD_AXIS_MATRIX = """
[[group]]
detector = "hpet"
apic = "x2apic"
iommu = ["described", "hpet-in-ivrs"]
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
    (["run", "--scenario", "boot", "--iommu", "maybe"],
     "unknown iommu value 'maybe'; known: off, described, undescribed"),
    (["run", "--scenario", "boot", "--apic", "x3apic"],
     "unknown apic value 'x3apic'; known: xapic, x2apic"),
    (["run", "--scenario", "boot", "--comparator", "strict"],
     "unknown comparator value 'strict'; known: qemu, hardware"),
    (["run", "--scenario", "boot", "--flavour", "kasan"],
     "unknown flavour value 'kasan'; known: default, debug"),
    (["run", "--matrix", "matrix/nightly.toml", "--flavour", "debug,lockdep"],
     "unknown flavour value 'lockdep'; known: default, debug"),
    (["run", "--matrix", "{bad_flavour_matrix}"],
     "group 'debug?': unknown flavour value 'prove-locking'; known: default, debug"),
    (["run", "--matrix", "matrix/nightly.toml", "--apic", "x2apic,x3apic"],
     "unknown apic value 'x3apic'"),
    (["run", "--matrix", "{bad_axis_matrix}"],
     "unknown iommu value 'hpet-in-ivrs'; known: off, described, undescribed"),
    (["run", "--scenario", "boot", "--cpus", "6", "--sockets", "4"],
     "cpus=6 cannot be split into sockets=4"),
    (["run", "--scenario", "boot", "--thresh", "61"], "watchdog_thresh=61: must be 0..60"),
    (["run", "--scenario", "kdump", "--crash-kernel", "16"],
     "crash_kernel=16 MiB: must be 64..256 (memory minus 256) MiB"),
    (["run", "--scenario", "boot", "--detector", "nope"], "unknown detector 'nope'"),
    (["run"], "say what to run"),
    (["run", "--scenario", "soak", "--soak-seconds", "0"], "--soak-seconds 0: must be more than 0"),
    (["run", "--scenario", "boundary-sweep", "--scenario-arg", "boundary-sweep.per_length"],
     "--scenario-arg boundary-sweep.per_length: expected NAME.KEY=NUMBER"),
    (["run", "--scenario", "boundary-sweep", "--scenario-arg", "boundary-sweep.per_length=x"],
     "--scenario-arg boundary-sweep.per_length=x: 'x' is not a number"),
    (["run", "--scenario", "boundary-sweep", "--scenario-arg", "boundary-sweep.per_length=-2"],
     "scenario 'boundary-sweep': per_length = -2: must be more than 0"),
    (["run", "--scenario", "boot", "--scenario-arg", "boot.seconds=3"],
     "scenario 'boot' has no parameter 'seconds'; known: none"),
    (["run", "--scenario", "boot", "--jobs", "-1"], "jobs must be at least 1, not -1"),
    (["run", "--scenario", "boot", "--retries", "-1"], "retries must be 0 or more, not -1"),
    (["run", "--matrix", "/nonexistent.toml"], "matrix file /nonexistent.toml does not exist"),
    (["run", "--matrix", "matrix/nightly.toml", "--sockets", "2"],
     "--sockets cannot be used with --matrix"),
    (["run", "--matrix", "matrix/nightly.toml", "--cpus", "3"],
     "no case of matrix/nightly.toml matches the selection"),
    (["run", "--matrix", "{bad_matrix}"], "unknown key 'cpu'"),
    (["parse", "/nonexistent.log"], "no such log file"),
    (["run", "--scenario", "boot", "--cpus", "4", "--maxcpus", "2"],
     "maxcpus=2: must be 4 (cpus)..255"),
    (["ssh", "--guest", "/nonexistent", "--", "true"],
     "/nonexistent is not the directory of a guest booted with --ssh (no ssh.json)"),
    (["scp", "--guest", "/nonexistent", "a", "b"],
     "scp: exactly one of SOURCE and DEST is guest:PATH"),
    (["scp", "--guest", "/nonexistent", "/nonexistent.ko", "guest:/tmp/"],
     "scp: /nonexistent.ko is not a file"),
    (["qmp", "--guest", "/nonexistent", "cpu-add"],
     "/nonexistent is not the directory of a running `harness boot` guest"),
    (["symbolize", "/nonexistent.log"], "console log /nonexistent.log does not exist"),
    (["compare", "/nonexistent.json", "/nonexistent.json"],
     "/nonexistent.json: not a results.json of `harness run`"),
    (["module", "/tmp"], "/tmp has no Kbuild or Makefile"),
])
def test_bad_input_one_line(args, needle, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD_MATRIX)
    out = tmp_path / "out"
    bad_axis = tmp_path / "bad-axis.toml"
    bad_axis.write_text(BAD_AXIS_MATRIX)
    bad_flavour = tmp_path / "bad-flavour.toml"
    bad_flavour.write_text(BAD_FLAVOUR_MATRIX)
    args = [a.replace("{bad_matrix}", str(bad)).replace("{bad_axis_matrix}", str(bad_axis))
            .replace("{bad_flavour_matrix}", str(bad_flavour)) for a in args]
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


def _one_error_line(res, needle):
    assert res.returncode == 2, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("harness: error: "), res.stderr
    assert needle in lines[0], lines[0]


def test_qemu_too_old(tmp_path):
    fake = tmp_path / "bin" / "qemu-system-x86_64"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'QEMU emulator version 6.2.0 (Debian 1:6.2+dfsg-2)'\n")
    fake.chmod(0o755)
    env = dict(os.environ, QEMU=str(fake))
    res = subprocess.run([sys.executable, "-m", "harness", "run", "--scenario", "boot",
                          "--out", str(tmp_path / "out")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    _one_error_line(res, "is QEMU 6.2, too old: the harness needs 7.2 or newer")
    assert not (tmp_path / "out").exists()


def test_qemu_missing(tmp_path):
    env = dict(os.environ, QEMU=str(tmp_path / "qemu-system-x86_64"))
    res = subprocess.run([sys.executable, "-m", "harness", "run", "--scenario", "boot",
                          "--out", str(tmp_path / "out")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    _one_error_line(res, "qemu-system-x86_64 not found")


@pytest.fixture
def small_fs(tmp_path):
    """A real 64 MiB file system: too small for a kernel tree."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    yield mnt
    subprocess.run(["umount", str(mnt)])


def test_no_free_disk_for_the_build(small_fs):
    env = dict(os.environ, HARNESS_CACHE=str(small_fs / "cache"))
    env.pop("KERNEL_SRC", None)
    res = subprocess.run([sys.executable, "-m", "harness", "kernel"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    _one_error_line(res, "not enough free disk for the kernel source under")
    assert not list((small_fs / "cache").glob("src/*.tmp")), "half-extracted tree left"
