"""Choose the accelerator by a real probe, never by /dev/kvm alone.

On some hosts /dev/kvm opens and a VM is created, and even a boot sector
runs, but a Linux guest hangs or QEMU aborts setting an MSR. So the probe
boots the very kernel and initramfs the harness will use, with the CPU model
the real guests get, and only an accelerator under which that kernel reaches
"Run /init" within the deadline is used.
"""
import os
import select
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
import time

PROBE_DEADLINE_S = 20.0
MARK = b"Run /init as init process"


def cpu_model(accel: str) -> str:
    return "host" if accel == "kvm" else "max"


def probe(accel: str, kernel: Path, initrd: Path, qemu: str = "qemu-system-x86_64",
          deadline_s: float = PROBE_DEADLINE_S) -> tuple[bool, str]:
    """Boot kernel+initrd under `accel` to /init; return (works, reason)."""
    argv = [qemu, "-machine", "q35", "-accel", accel, "-cpu", cpu_model(accel),
            "-m", "256", "-nodefaults", "-no-user-config", "-display", "none",
            "-no-reboot", "-serial", "stdio", "-kernel", str(kernel),
            "-initrd", str(initrd), "-append", "console=ttyS0 panic=-1"]
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return False, f"{qemu} not found"
    start = time.monotonic()
    got = b""
    exited = None
    try:
        while time.monotonic() < start + deadline_s and MARK not in got:
            r, _, _ = select.select([proc.stdout], [], [], 0.1)
            if r:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                got = got[-4096:] + chunk
        try:   # stdout closed: QEMU is exiting, let it finish
            exited = proc.wait(1) if MARK not in got else None
        except subprocess.TimeoutExpired:
            exited = None
    finally:
        proc.kill()
        _, err = proc.communicate()
    if MARK in got:
        return True, f"kernel reached /init in {time.monotonic() - start:.1f} s"
    if exited is None:
        return False, f"guest hung: kernel did not reach /init within {deadline_s:.0f} s"
    why = [line for line in err.decode(errors="replace").splitlines()
           if "warning" not in line]
    return False, why[-1] if why else f"qemu exited with {exited}"


@lru_cache(maxsize=None)
def choose_accel(kernel: Path, initrd: Path, forced: str | None = None) -> str:
    """`forced` (kvm or tcg: the command line's HARNESS_ACCEL) is the choice;
    otherwise KVM only if it works."""
    if forced:
        return forced
    if not os.path.exists("/dev/kvm"):
        return "tcg"
    ok, why = probe("kvm", kernel, initrd)
    if ok:
        return "kvm"
    print(f"harness: KVM unusable ({why}); falling back to TCG", file=sys.stderr)
    return "tcg"
