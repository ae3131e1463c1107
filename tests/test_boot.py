"""`python -m harness boot` the way a person uses it: boot 4 vCPUs with the
IOMMU on, lock up CPU 2 from the console, see the report, ask QMP from
another process, SSH in, build a module, copy it in and load it, copy a
file out, quit with Ctrl-], and no QEMU is left."""
import json
import re
import secrets
import subprocess
import sys

import pexpect
import pytest

from harness.paths import REPO

from test_cleanup import qemus_for, wait_until


@pytest.fixture
def session(built, tmp_path):
    child = pexpect.spawn(sys.executable, ["-m", "harness", "boot", "--cpus", "4",
                                           "--iommu", "on", "--ssh", "--out", str(tmp_path)],
                          cwd=str(REPO), encoding="utf-8", codec_errors="replace",
                          timeout=240, dimensions=(50, 200))
    yield child, tmp_path
    if child.isalive():
        child.terminate(force=True)


def test_boot_lock_qmp_and_quit(session, built):
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
    # An NMI nobody claims is reported as unknown on its CPU; a count out
    # of range is refused with one line, and the shell sees a failure.
    child.sendline("hld-nmi 3")
    child.expect("Uhhuh. NMI received for unknown reason [0-9a-f]+ on CPU 3", timeout=60)
    child.sendline("hld-nmi 3 101; echo status=$?")
    child.expect("hld-nmi: refused 'nmi 3 101'", timeout=60)
    child.expect("status=1")
    child.sendline("hld-nmi 7; echo status=$?")       # no CPU 7 in a 4-CPU guest
    child.expect("hld-nmi: refused 'nmi 7 1'", timeout=60)
    child.expect("status=1")
    res = subprocess.run([sys.executable, "-m", "harness", "qmp", "--guest", workdir,
                          "cpus"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert sorted(c["cpu-index"] for c in json.loads(res.stdout)) == [0, 1, 2, 3]
    _ssh_module_round_trip(child, workdir, out, built[0].release)
    child.send("\x1d")                                 # Ctrl-]
    child.expect("guest shut down")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert wait_until(lambda: not qemus_for(str(out)), 20), "QEMU left running"
    log = next(out.glob("boot-*/console.log"))
    assert re.search(r"Watchdog detected hard LOCKUP on cpu 2", log.read_text())
    assert "lockup_inject: count must be 1..100" in log.read_text()
    # The locked CPU's backtrace names lockup_fn in our module, which is
    # built with -g: symbolize must put it inside lockup_fn's source lines.
    res = harness("symbolize", str(log))
    assert res.returncode == 0, res.stderr
    lines = re.findall(r"lockup_fn\+0x\w+/0x\w+ \[lockup_inject\]  \S*/lockup_inject\.c:(\d+)",
                       res.stdout)
    assert lines, res.stdout
    first, last = _function_lines(REPO / "guest/modules/lockup_inject/lockup_inject.c",
                                  "static int lockup_fn(")
    assert all(first <= int(n) <= last for n in lines), (lines, first, last)


def _function_lines(source, signature):
    """First and last line of a C function defined at column 0."""
    text = source.read_text().splitlines()
    first = next(i for i, line in enumerate(text, 1) if line.startswith(signature))
    last = next(i for i, line in enumerate(text, 1) if i > first and line == "}")
    return first, last


HELLO = """#include <linux/module.h>
static int __init hello_init(void)
{
	pr_info("hello from harness test %s\\n", "TOKEN");
	return 0;
}
module_init(hello_init);
MODULE_LICENSE("GPL");
"""


def harness(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _ssh_module_round_trip(child, workdir, out, release):
    """From other processes, as a second terminal would: build a module
    that did not exist before, copy it in over SSH, load it, see it print,
    and copy /proc/modules back out."""
    token = secrets.token_hex(6)
    src = out / "hello"
    src.mkdir()
    (src / "hello_harness.c").write_text(HELLO.replace("TOKEN", token))
    (src / "Kbuild").write_text("obj-m += hello_harness.o\n")
    res = harness("module", str(src), timeout=300)
    assert res.returncode == 0, res.stderr
    ko = res.stdout.split()[-1]
    assert ko.endswith("hello_harness.ko")
    res = harness("ssh", "--guest", workdir, "--", "uname", "-r")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == release
    res = harness("scp", "--guest", workdir, ko, "guest:/tmp/")
    assert res.returncode == 0, res.stderr
    res = harness("ssh", "--guest", workdir, "--", "insmod", "/tmp/hello_harness.ko")
    assert res.returncode == 0, res.stderr
    child.expect(f"hello from harness test {token}", timeout=60)
    res = harness("ssh", "--guest", workdir, "--", "false")
    assert res.returncode == 1, "the remote exit status is ours"
    res = harness("scp", "--guest", workdir, "guest:/proc/modules", str(out))
    assert res.returncode == 0, res.stderr
    assert re.search(r"^hello_harness ", (out / "modules").read_text(), re.M)
    # And a shell on a pty of our size, whose exit status comes back.
    sh = pexpect.spawn(sys.executable, ["-m", "harness", "ssh", "--guest", workdir],
                       cwd=str(REPO), encoding="utf-8", codec_errors="replace",
                       timeout=60, dimensions=(40, 120))
    sh.expect("# ")
    sh.sendline("echo sum $((1+2)); tty; stty size")
    sh.expect("sum 3")
    sh.expect(r"/dev/pts/\d+")
    sh.expect("40 120")
    sh.sendline("exit 3")
    sh.expect(pexpect.EOF)
    sh.close()
    assert sh.exitstatus == 3


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
