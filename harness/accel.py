"""Choose the accelerator by a real probe, never by /dev/kvm alone.

On some hosts /dev/kvm opens and a VM is created but the guest never runs.
The probe boots a 512-byte boot sector that writes one byte to COM1, and
only an accelerator that delivers that byte within the deadline is used.
"""
import os
import select
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

PROBE_DEADLINE_S = 8.0
_MARK = b"K"
# mov dx,0x3f8; mov al,'K'; out dx,al; hlt; jmp back to hlt
_BOOT_CODE = bytes([0xBA, 0xF8, 0x03, 0xB0, _MARK[0], 0xEE, 0xF4, 0xEB, 0xFD])


def _disk_image() -> bytes:
    # SeaBIOS does not boot an AHCI disk of a single sector: pad to 1 MiB.
    sector = _BOOT_CODE + bytes(510 - len(_BOOT_CODE)) + b"\x55\xaa"
    return sector + bytes((1 << 20) - len(sector))


def probe(accel: str, qemu: str = "qemu-system-x86_64",
          deadline_s: float = PROBE_DEADLINE_S) -> tuple[bool, str]:
    """Boot the probe sector under `accel`; return (works, reason)."""
    with tempfile.TemporaryDirectory(prefix="harness-probe-") as tmp:
        img = Path(tmp) / "probe.img"
        img.write_bytes(_disk_image())
        argv = [qemu, "-machine", "q35", "-accel", accel, "-nodefaults",
                "-display", "none", "-no-user-config", "-serial", "stdio",
                "-drive", f"file={img},format=raw,if=ide"]
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            return False, f"{qemu} not found"
        end = time.monotonic() + deadline_s
        got = b""
        exited = None
        try:
            while time.monotonic() < end and _MARK not in got:
                r, _, _ = select.select([proc.stdout], [], [], 0.1)
                if r:
                    chunk = os.read(proc.stdout.fileno(), 4096)
                    if not chunk:
                        break
                    got += chunk
            try:   # stdout closed: QEMU is exiting, let it finish
                exited = proc.wait(1) if _MARK not in got else None
            except subprocess.TimeoutExpired:
                exited = None
        finally:
            proc.kill()
            _, err = proc.communicate()
        if _MARK in got:
            return True, "guest ran"
        if exited is None:
            return False, f"guest hung: no output within {deadline_s:.0f} s"
        why = err.decode(errors="replace").strip().splitlines()
        return False, why[-1] if why else f"qemu exited with {exited}"


@lru_cache(maxsize=None)
def choose_accel() -> str:
    """HARNESS_ACCEL=kvm|tcg forces a choice; otherwise KVM only if it works."""
    forced = os.environ.get("HARNESS_ACCEL")
    if forced:
        return forced
    if not os.path.exists("/dev/kvm"):
        return "tcg"
    ok, why = probe("kvm")
    if ok:
        return "kvm"
    print(f"harness: KVM unusable ({why}); falling back to TCG", file=sys.stderr)
    return "tcg"
