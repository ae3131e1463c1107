"""Assemble the guest initramfs: busybox, our /init and agent, the modules.

Written as a newc cpio by hand (the format is a fixed ASCII header per file)
so the image depends on nothing but its inputs, and is renamed into place
only once complete.
"""
import gzip
import hashlib
import io
import os
import secrets
import subprocess
from pathlib import Path

from harness import elfcheck
from harness.errors import HarnessError
from harness.kbuild import Kernel, build_kernel, fragments_for
from harness.paths import GUEST_DIR

BUSYBOX = Path("/bin/busybox")
# Guest path -> file under guest/. hld-*: commands for people at the console.
GUEST_FILES = {"init": "init", "bin/agent": "agent.sh",
               **{f"bin/{n}": f"bin/{n}" for n in ("hld-lock", "hld-state", "hld-nmis", "hld-nmi")}}
DIRS = ("bin", "sbin", "dev", "proc", "sys", "tmp", "root", "lib", "var",
        "lib/modules", "usr", "usr/bin", "usr/sbin", "etc")


class Newc:
    def __init__(self):
        self.buf = io.BytesIO()
        self.ino = 1

    def add(self, name: str, mode: int, data: bytes = b"") -> None:
        name_b = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_b), 0]
        self.ino += 1
        self.buf.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        self.buf.write(name_b)
        self._pad()
        self.buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self.buf.write(b"\0" * (-self.buf.tell() % 4))

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return self.buf.getvalue()


def _busybox_applets() -> list[str]:
    if not BUSYBOX.is_file():
        raise HarnessError(f"{BUSYBOX} is missing: install Debian's busybox-static")
    out = subprocess.run([str(BUSYBOX), "--list-full"], capture_output=True,
                         text=True, check=True).stdout
    return [a for a in out.split() if a and a != "bin/busybox"]


def _private_tmp(path: Path) -> Path:
    """A temporary name next to `path` that no other process uses: guest
    pools in several processes may build the same file at once, and each
    then replaces it atomically with the same content."""
    return path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _build_tools(out_dir: Path) -> dict:
    """Compile guest/tools/*.c as static binaries (the guest has no libc)."""
    tools = {}
    for src in sorted((GUEST_DIR / "tools").glob("*.c")):
        exe = out_dir / "tools" / src.stem
        if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
            exe.parent.mkdir(parents=True, exist_ok=True)
            tmp = _private_tmp(exe)
            res = subprocess.run(["cc", "-static", "-Os", "-Wall", "-o", str(tmp), str(src)],
                                 capture_output=True, text=True)
            if res.returncode != 0:
                tmp.unlink(missing_ok=True)
                raise HarnessError(f"cannot build {src.name}: {res.stderr.strip()[-300:]}")
            os.replace(tmp, exe)
        tools[f"bin/{src.stem}"] = exe
    return tools


def build_initramfs(kernel: Kernel, out_dir: Path) -> Path:
    """Return the path of an initramfs for this kernel, building it if needed."""
    # A module the kernel would refuse, or a bzImage that is not this
    # vmlinux, is refused here, before any boot, saying what does not match.
    elfcheck.check(kernel.bzimage, kernel.vmlinux, kernel.release, kernel.detector,
                   kernel.modules, fragments_for(kernel.detector, kernel.flavour))
    sources = {dst: GUEST_DIR / src for dst, src in GUEST_FILES.items()}
    sources.update(_build_tools(out_dir))
    mods = {f"lib/modules/{name}.ko": path for name, path in sorted(kernel.modules.items())}
    h = hashlib.sha256(BUSYBOX.read_bytes() if BUSYBOX.is_file() else b"")
    for dst, p in {**sources, **mods}.items():
        h.update(dst.encode() + b"\0" + p.read_bytes())
    out = out_dir / f"initramfs-{h.hexdigest()[:12]}.cpio.gz"
    if out.exists():
        return out
    cpio = Newc()
    for d in DIRS:
        cpio.add(d, 0o040755)
    cpio.add("bin/busybox", 0o100755, BUSYBOX.read_bytes())
    for applet in _busybox_applets():
        if applet.split("/")[0] in ("bin", "sbin", "usr") and applet != "bin/busybox":
            cpio.add(applet, 0o120777, b"/bin/busybox")
    for dst, p in sources.items():
        cpio.add(dst, 0o100755, p.read_bytes())
    for dst, p in mods.items():
        cpio.add(dst, 0o100644, p.read_bytes())
    cpio.add("etc/kernel-release", 0o100644, kernel.release.encode() + b"\n")
    tmp = _private_tmp(out)
    tmp.write_bytes(gzip.compress(cpio.finish(), compresslevel=6, mtime=0))
    os.replace(tmp, out)
    return out


def build_guest(detector: str, kernel_src: str | None = None,
                flavour: str | None = None) -> tuple[Kernel, Path]:
    """A detector's kernel in a flavour (cached build) and an initramfs
    whose modules are built against it."""
    kernel = build_kernel(detector, kernel_src, flavour=flavour)
    return kernel, build_initramfs(kernel, kernel.build_dir.parent)


def with_crash_kernel(kernel_image: Path, initrd: Path) -> Path:
    """`initrd` followed by an archive that carries the kernel image and
    `initrd` itself in /boot: what guest/tools/kdump-load gives
    kexec_file_load for a crash kernel (a machine with crash_kernel_mb).
    Cached next to `initrd`, by a hash of both."""
    image, base = Path(kernel_image).read_bytes(), Path(initrd).read_bytes()
    digest = hashlib.sha256(image + b"\0" + base).hexdigest()[:12]
    out = Path(initrd).with_name(f"initramfs-kdump-{digest}.cpio")
    if out.exists():
        return out
    cpio = Newc()
    cpio.add("boot", 0o040755)
    cpio.add("boot/vmlinuz", 0o100644, image)
    cpio.add("boot/initrd.img", 0o100644, base)
    # Archives after the first start on a 4-byte boundary; the kernel's
    # unpacker skips the zero padding between them.
    tmp = _private_tmp(out)
    tmp.write_bytes(base + b"\0" * (-len(base) % 4) + cpio.finish())
    os.replace(tmp, out)
    return out
