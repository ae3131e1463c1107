"""`python -m harness boot` the way a person uses it: boot 4 vCPUs with the
IOMMU on, lock up CPU 2 from the console, see the report, ask QMP from
another process, quit with Ctrl-], and no QEMU is left."""
import json
import re
import subprocess
import sys

import pexpect
import pytest

from harness.paths import REPO

from test_cleanup import _qemus_for, _wait


@pytest.fixture
def session(built, tmp_path):
    child = pexpect.spawn(sys.executable, ["-m", "harness", "boot", "--cpus", "4",
                                           "--iommu", "on", "--out", str(tmp_path)],
                          cwd=str(REPO), encoding="utf-8", codec_errors="replace",
                          timeout=240, dimensions=(50, 200))
    yield child, tmp_path
    if child.isalive():
        child.terminate(force=True)


def test_boot_lock_qmp_and_quit(session):
    child, out = session
    child.expect(r"qmp --guest (\S+) nmi")
    workdir = child.match.group(1)
    child.expect("Ctrl-] shuts the guest down and leaves.")
    child.expect(r"# ")                               # the guest shell's prompt
    child.sendline("hld-lock 2 6000")
    child.expect("Watchdog detected hard LOCKUP on cpu 2", timeout=120)
    child.expect("lockup_inject: cpu 2: released", timeout=120)
    child.sendline("hld-state")
    child.expect(r"hpet_hld/monitored_cpus\s+0-3")
    res = subprocess.run([sys.executable, "-m", "harness", "qmp", "--guest", workdir,
                          "cpus"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert sorted(c["cpu-index"] for c in json.loads(res.stdout)) == [0, 1, 2, 3]
    child.send("\x1d")                                 # Ctrl-]
    child.expect("guest shut down")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert _wait(lambda: not _qemus_for(str(out)), 20), "QEMU left running"
    log = (next(out.glob("boot-*/console.log"))).read_text()
    assert re.search(r"Watchdog detected hard LOCKUP on cpu 2", log)


def test_kernel_of_another_release_is_refused(built, tmp_path):
    kernel, _ = built
    img = tmp_path / "bzImage"
    data = kernel.bzimage.read_bytes()
    release = kernel.release.encode()
    other = release[:-1] + (b"8" if release[-1:] != b"8" else b"9")
    img.write_bytes(data.replace(release + b" (", other + b" (", 1))
    res = subprocess.run([sys.executable, "-m", "harness", "boot", "--kernel", str(img),
                          "--out", str(tmp_path / "out")], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("harness: error: ") and \
        f"is kernel {other.decode()}, but the initramfs modules are built for " \
        f"{kernel.release}" in last, res.stderr
