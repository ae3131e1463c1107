"""Build the patched QEMU: Debian's orig tarball, the series in qemu/patches,
a minimal TCG-only qemu-system-x86_64, cached and checked before use.

The source is Debian's qemu_10.0.2+ds orig tarball from the backports
suite's deb-src, fetched with apt through a private apt state directory
(nothing of the machine's apt configuration changes) whose one source is
derived at run time from the mirror that the machine's own apt sources
name. The tarball is checked against its pinned SHA-256.

A build is cached under cache_dir()/qemu/<key>, the key a hash of every
input: tarball, patches, configure flags, the build venv's packages, the
recipe version. It is made in <key>.tmp, checked (version and a probe of
every patched feature), its stamp written last, and then renamed into
place: a cache entry is whole or absent. The binary finds its firmware
in ../share/qemu beside it, links to Debian's seabios and qemu-system-data.

Features are probed for real, not guessed from the version: the new
properties in -device ...,help, and under the qtest accelerator (no guest,
no CPU runs) an HPET FSB message sent at the IOMMU, whose fault record
shows the HPET's source-id (the HPET is behind the IOMMU) and fault reason
25h (a compatibility-format interrupt blocked while GCMD.CFI is clear).
"""
import dataclasses
import functools
import hashlib
import json
import os
import re
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.kbuild import CacheLock, need_space, read_series, run
from harness.paths import REPO, cache_dir
from harness.qemu import version_of

QEMU_DIR = REPO / "qemu"
QEMU_PATCH_DIR = QEMU_DIR / "patches"

# Bump when the recipe changes in a way the inputs below don't show.
RECIPE_VERSION = "2"            # 2: git apply (0006 is a binary patch)
VERSION = (10, 0, 2)
SOURCE_PACKAGE = "qemu"
TARBALL = "qemu_10.0.2+ds.orig.tar.xz"
TARBALL_SHA256 = "0901da33844a331bf8b3602b9c1fbd178e60b737c8e3ade678255bd090c9b9f1"
TOP_DIR = "qemu-10.0.2"
DEBIAN_CODENAME = "bookworm"
SUITE = f"{DEBIAN_CODENAME}-backports"
# The +ds tarball has no python/wheels: configure gets its meson from here.
VENV_PACKAGES = ("meson==1.5.0", "pycotap==1.3.1")
CONFIGURE_FLAGS = ("--target-list=x86_64-softmmu", "--without-default-features",
                   "--enable-tcg", "--enable-slirp", "--enable-fdt=system",
                   "--disable-docs", "--disable-install-blobs")
TARGET = "qemu-system-x86_64"
NICE = 10                       # others build kernels on the same cores
# Debian's firmware: SeaBIOS, the option ROMs of qemu-system-data, and
# ipxe-qemu's NIC ROMs (virtio-net-pci, for `boot --ssh`, wants efi-virtio.rom).
FIRMWARE_DIRS = (Path("/usr/share/seabios"), Path("/usr/share/qemu"),
                 Path("/usr/lib/ipxe/qemu"))
FIRMWARE_NEEDED = ("bios-256k.bin", "linuxboot_dma.bin", "kvmvapic.bin", "efi-virtio.rom")
# Measured: the extracted source is 0.4 GiB, the build 0.6 GiB.
BUILD_BYTES = 2 << 30

# Feature -> what it is. Each has a probe below.
FEATURES = {
    "hpet-remap": "the HPET's FSB messages go through intel-iommu with its source-id",
    "cfi": "GCMD.CFI honoured: compatibility-format interrupts blocked and recorded",
    "hpet-scope": "intel-iommu hpet-scope=on|off (the HPET in the DMAR table or not)",
    "strict-comparator": "hpet strict-comparator=on (a past comparator never fires)",
    "hpet-route-reset": "a reset (as on S3 resume) clears each HPET timer's FSB route",
}
HPET_SOURCE_ID = 0xff78          # bus 0xff, device 0x0f, function 0 (patch 0001)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def series_patches() -> list[Path]:
    """Patches named in qemu/patches/series, in order."""
    series = QEMU_PATCH_DIR / "series"
    if not series.is_file():
        raise HarnessError(f"{series} does not exist")
    patches = read_series(series)
    if not patches:
        raise HarnessError(f"{series} lists no patch")
    return patches


def build_key(patches: list[Path] | None = None) -> str:
    """Hash of everything that goes into the build."""
    h = hashlib.sha256(f"recipe {RECIPE_VERSION}\0".encode())
    h.update(f"{TARBALL} {TARBALL_SHA256}\0".encode())
    for p in patches if patches is not None else series_patches():
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(("\0".join(CONFIGURE_FLAGS) + "\0" + "\0".join(VENV_PACKAGES)).encode())
    return h.hexdigest()[:16]


# -- the source tarball ---------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _deb822_stanzas(text: str) -> list[dict]:
    stanzas, cur, last = [], {}, None
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if cur:
                stanzas.append(cur)
            cur, last = {}, None
        elif line[0] in " \t" and last:
            cur[last] += " " + line.strip()
        elif ":" in line:
            last, value = line.split(":", 1)
            last = last.strip().lower()
            cur[last] = value.strip()
    return stanzas


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> tuple[str, str | None]:
    """(URI, Signed-By keyring or None) of the machine's own apt source for
    Debian's main archive (the one that serves DEBIAN_CODENAME)."""
    for f in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for st in _deb822_stanzas(f.read_text(errors="replace")):
            if st.get("enabled", "yes").lower() == "no":
                continue
            if "deb" not in st.get("types", "").split():
                continue
            if DEBIAN_CODENAME in st.get("suites", "").split() and st.get("uris"):
                return st["uris"].split()[0], st.get("signed-by")
    lists = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for f in lists:
        if not f.is_file():
            continue
        for line in f.read_text(errors="replace").splitlines():
            m = re.match(r"\s*deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s", line)
            if m and m.group(3) == DEBIAN_CODENAME:
                opts = m.group(1) or ""
                key = re.search(r"signed-by=(\S+?)[\s\]]", opts)
                return m.group(2), key.group(1) if key else None
    raise HarnessError(f"no apt source for Debian {DEBIAN_CODENAME} in {apt_dir}/sources.list"
                       f"{{,.d}}: cannot fetch {TARBALL}; put it in "
                       f"{cache_dir() / 'qemu' / 'src'} yourself")


def fetch_tarball() -> Path:
    """Debian's orig tarball, from the cache or fetched with apt; checked."""
    src_dir = cache_dir() / "qemu" / "src"
    src_dir.mkdir(parents=True, exist_ok=True)
    dest = src_dir / TARBALL
    with CacheLock(src_dir / "fetch.lock"):
        if dest.is_file():
            if _sha256(dest) == TARBALL_SHA256:
                return dest
            dest.unlink()                 # a bad copy: fetch it again
        uri, keyring = debian_mirror()
        apt = cache_dir() / "qemu" / "apt"
        shutil.rmtree(apt, ignore_errors=True)
        (apt / "lists" / "partial").mkdir(parents=True)
        (apt / "parts").mkdir()
        stanza = (f"Types: deb-src\nURIs: {uri}\nSuites: {SUITE}\nComponents: main\n"
                  + (f"Signed-By: {keyring}\n" if keyring else ""))
        (apt / "parts" / "harness-qemu-src.sources").write_text(stanza)
        (apt / "none.list").write_text("")
        opts = ["-o", f"Dir::Etc::SourceList={apt / 'none.list'}",
                "-o", f"Dir::Etc::SourceParts={apt / 'parts'}",
                "-o", f"Dir::State::Lists={apt / 'lists'}",
                "-o", f"Dir::Cache={apt / 'cache'}"]
        run(["apt-get", "-q", *opts, "update"], apt / "apt.log")
        with tempfile.TemporaryDirectory(dir=src_dir) as tmp:
            # The .dsc and the Debian tarball may not be served (measured:
            # 404) while the orig tarball is: judge by the file, not the exit.
            subprocess.run(["apt-get", "-q", *opts, "source", "--download-only",
                            f"{SOURCE_PACKAGE}/{SUITE}"], cwd=tmp,
                           stdout=open(apt / "apt.log", "ab"), stderr=subprocess.STDOUT)
            got = Path(tmp) / TARBALL
            if not got.is_file():
                raise HarnessError(f"apt-get source {SOURCE_PACKAGE}/{SUITE} from {uri} "
                                   f"did not fetch {TARBALL} (see {apt / 'apt.log'})")
            digest = _sha256(got)
            if digest != TARBALL_SHA256:
                raise HarnessError(f"{TARBALL} from {uri} has SHA-256 {digest}, "
                                   f"expected {TARBALL_SHA256}")
            os.rename(got, dest)
        return dest


# -- the build --------------------------------------------------------------

@dataclass(frozen=True)
class Qemu:
    binary: Path
    version: tuple[int, int, int]
    features: tuple[str, ...]
    key: str = ""
    build_seconds: float | None = None

    def missing(self, wanted=None) -> list[str]:
        return [f for f in (wanted or FEATURES) if f not in self.features]


def _fix_source(src: Path) -> None:
    """The +ds tarball has no edk2 blobs; with bzip2 installed meson wants
    to unpack them. We need none (Debian's firmware is used)."""
    mb = src / "meson.build"
    text = mb.read_text()
    old = "unpack_edk2_blobs = bzip2.found()"
    if text.count(old) != 1:
        raise HarnessError(f"{mb}: expected one '{old}' to turn off (recipe out of date?)")
    mb.write_text(text.replace(old, "unpack_edk2_blobs = false"))


def _link_firmware(share: Path) -> None:
    """Links in share/qemu beside bin/ (where QEMU looks, relative to its
    binary) to Debian's firmware; idempotent, so a cached build gets the
    links a newer recipe adds without a rebuild."""
    share.mkdir(parents=True, exist_ok=True)
    for d in FIRMWARE_DIRS:
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            link = share / f.name
            if f.name == "trace-events-all" or link.exists():
                continue
            if link.is_symlink():
                link.unlink()                   # dangling: the package moved it
            link.symlink_to(f)
    missing = [n for n in FIRMWARE_NEEDED if not (share / n).exists()]
    if missing:
        raise HarnessError(f"firmware {', '.join(missing)} not found in "
                           f"{' or '.join(map(str, FIRMWARE_DIRS))}: install Debian's "
                           "seabios and qemu-system-data (make deps)")


def _read_stamp(key_dir: Path) -> Qemu | None:
    stamp = key_dir / "qemu.json"
    if not stamp.is_file():
        return None
    d = json.loads(stamp.read_text())
    return Qemu(binary=key_dir / "bin" / TARGET, version=tuple(d["version"]),
                features=tuple(d["features"]), key=d["key"],
                build_seconds=d.get("build_seconds"))


def build_qemu(jobs: int | None = None) -> Qemu:
    """The patched QEMU: cached, or built now (about 11 min on 2 cores)."""
    patches = series_patches()
    key = build_key(patches)
    root = cache_dir() / "qemu"
    final = root / key
    with CacheLock(root / f"{key}.lock"):
        q = _read_stamp(final)
        if q is not None and q.binary.is_file():
            _log(f"qemu: cached build {final}")
            _link_firmware(final / "share" / "qemu")
            # Checked before use: the firmware links may have gone.
            return dataclasses.replace(check(q.binary, require=True), key=q.key,
                                       build_seconds=q.build_seconds)
        tarball = fetch_tarball()
        tmp = root / f"{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        need_space(root, BUILD_BYTES, "the QEMU build")
        tmp.mkdir(parents=True)
        log = tmp / "build.log"
        t0 = time.monotonic()
        run(["tar", "--no-same-owner", "-xf", tarball, "-C", tmp], log)
        src = tmp / TOP_DIR
        _fix_source(src)
        # git apply: GNU patch cannot apply 0006's binary diff. The ceiling
        # keeps git from taking a repository above the cache for the tree.
        for p in patches:
            run(["env", f"GIT_CEILING_DIRECTORIES={tmp}", "git", "apply", "-p1",
                 "--whitespace=nowarn", p], log, cwd=src)
        venv = tmp / "venv"
        run([sys.executable, "-m", "venv", venv], log)
        run([venv / "bin" / "pip", "install", "-q", *VENV_PACKAGES], log)
        build = src / "build"
        build.mkdir()
        nice = ["nice", "-n", str(NICE)]
        run([*nice, src / "configure", f"--python={venv / 'bin' / 'python3'}",
             *CONFIGURE_FLAGS], log, cwd=build)
        run([*nice, "ninja", "-j", str(jobs or os.cpu_count() or 1), TARGET], log,
            cwd=build)
        (tmp / "bin").mkdir()
        shutil.copy2(build / TARGET, tmp / "bin" / TARGET)
        _link_firmware(tmp / "share" / "qemu")
        seconds = round(time.monotonic() - t0, 1)
        q = check(tmp / "bin" / TARGET, require=True)
        # Only the binary and its firmware links are kept (and the log).
        shutil.rmtree(src)
        shutil.rmtree(venv)
        stamp = {"key": key, "version": list(q.version), "features": list(q.features),
                 "build_seconds": seconds, "patches": [p.name for p in patches],
                 "configure": list(CONFIGURE_FLAGS), "tarball_sha256": TARBALL_SHA256}
        (tmp / "qemu.json.tmp").write_text(json.dumps(stamp, indent=1))
        os.rename(tmp / "qemu.json.tmp", tmp / "qemu.json")
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        _log(f"qemu: built {'.'.join(map(str, q.version))} in {seconds} s -> {final}")
        return dataclasses.replace(_read_stamp(final), build_seconds=seconds)


# -- checks before use --------------------------------------------------------

def qemu_version(binary: str | Path) -> tuple[int, int, int]:
    path = shutil.which(str(binary))
    if path is None:
        raise HarnessError(f"QEMU binary {binary} not found")
    return version_of(path)


def _device_props(binary: str, device: str) -> set[str]:
    res = subprocess.run([binary, "-nodefaults", "-device", f"{device},help"],
                         capture_output=True, text=True, timeout=20)
    return set(re.findall(r"^\s+([\w-]+)=", res.stdout, re.M))


class QTest:
    """QEMU's qtest protocol on QEMU's stdin/stdout: register reads and
    writes and virtual time, without a guest. Every reply has a deadline."""

    def __init__(self, binary: str | Path, args: list[str], timeout: float = 20.0):
        from harness.qemu import die_with_parent
        self.timeout = timeout
        self.argv = [str(binary), "-machine", "q35", "-accel", "qtest", "-qtest", "stdio",
                     "-qtest-log", "/dev/null", "-display", "none", "-nodefaults",
                     "-no-user-config", "-m", "128", *args]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, preexec_fn=die_with_parent)
        self._buf = b""

    def cmd(self, line: str) -> str:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise HarnessError(f"qtest: no reply to {line!r} in {self.timeout} s")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace").strip()
                raise HarnessError(f"qtest: QEMU exited at {line!r}: {err[-300:]}")
            self._buf += chunk
        reply, self._buf = self._buf.split(b"\n", 1)
        reply = reply.decode()
        if not reply.startswith("OK"):
            raise HarnessError(f"qtest: {line!r} -> {reply!r}")
        return reply

    def read(self, size: str, addr: int) -> int:
        return int(self.cmd(f"read{size} {addr:#x}").split()[1], 16)

    def write(self, size: str, addr: int, value: int) -> None:
        self.cmd(f"write{size} {addr:#x} {value:#x}")

    def step(self, ns: int) -> None:
        self.cmd(f"clock_step {ns}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# HPET and VT-d registers (IA-PC HPET 1.0a; VT-d 3.3 chapter 11).
HPET = 0xfed00000
HPET_CFG, HPET_STATUS, HPET_COUNTER = 0x10, 0x20, 0xf0
TN_ENABLE, TN_LEVEL, TN_FSB = 1 << 2, 1 << 1, 1 << 14
VTD = 0xfed90000
GCMD, GSTS, FSTS, IRTA, FRCD = 0x18, 0x1c, 0x34, 0xb8, 0x220
GCMD_IRE, GCMD_SIRTP, GCMD_CFI = 1 << 25, 1 << 24, 1 << 23
IRT_ADDR = 0x100000               # guest RAM for a 2-entry remapping table


def hpet_timer(t: QTest, n: int, config: int, comparator: int, fsb: int = 0) -> None:
    """Comparator first: a config write arms the timer with the comparator
    it has, and the reset value ~0 overflows QEMU's tick-to-ns conversion
    (fires at once) while the counter runs."""
    base = HPET + 0x100 + 0x20 * n
    t.write("q", base + 0x10, fsb)
    t.write("q", base + 0x8, comparator)
    t.write("q", base, config)


def fsb_fault(binary: str | Path, *, remappable: bool, cfi: bool = False,
              eim: bool = False) -> tuple[int, int | None, int | None]:
    """Enable interrupt remapping, make HPET timer 2 send one FSB message at
    0xfee00000 and return (FSTS, fault reason, source-id) of the first fault
    record (None, None when nothing was recorded).

    remappable: the message is in remappable format for IRTE 0, whose SVT
    asks for a source-id that is not the HPET's: a QEMU that sends the
    HPET's messages through the IOMMU with its source-id records 26h with
    that id. Else the message is in compatibility format: blocked (25h)
    unless GCMD.CFI was set and EIME is off."""
    with QTest(binary, ["-global", "hpet.msi=on",
                        "-device", "intel-iommu,intremap=on"]) as t:
        # IRTE 0: present, vector 0x30, SVT=01 (verify all 16 bits) SID 0x1234
        t.write("q", IRT_ADDR, 1 | (0x30 << 16))
        t.write("q", IRT_ADDR + 8, (1 << 18) | 0x1234)
        t.write("q", VTD + IRTA, IRT_ADDR | (1 << 11 if eim else 0))  # S=0: 2 entries
        t.write("l", VTD + GCMD, GCMD_SIRTP)
        t.write("l", VTD + GCMD, GCMD_IRE | (GCMD_CFI if cfi else 0))
        gsts = t.read("l", VTD + GSTS)
        if not gsts & GCMD_IRE:
            raise HarnessError(f"qtest: interrupt remapping did not enable (GSTS {gsts:#x})")
        addr = 0xfee00000 | ((0 << 5) | (1 << 4) if remappable else 0)
        data = 0 if remappable else 0x30
        hpet_timer(t, 2, TN_ENABLE | TN_FSB, 1000, fsb=(addr << 32) | data)
        t.write("q", HPET + HPET_CFG, 1)
        t.step(1_000_000)
        fsts = t.read("l", VTD + FSTS)
        hi = t.read("q", VTD + FRCD + 8)
        if not hi >> 63:
            return fsts, None, None
        return fsts, (hi >> 32) & 0xff, hi & 0xffff


def past_comparator_fires(binary: str | Path, strict: bool | None) -> dict:
    """HPET timer 0, 64-bit one-shot, level-triggered with its interrupt
    disabled, so a firing shows only in the status register: a comparator
    written 1 ms behind the running counter, then 10 ms of virtual time. A
    comparator 1 ms ahead, on timer 1, shows that the timers do run."""
    args = [] if strict is None else ["-global", f"hpet.strict-comparator={'on' if strict else 'off'}"]
    with QTest(binary, args) as t:
        t.write("q", HPET + HPET_CFG, 1)
        t.step(5_000_000)                              # counter at 5 ms
        now = t.read("q", HPET + HPET_COUNTER)
        hpet_timer(t, 0, TN_LEVEL, now - 100_000)      # 1 ms behind (10 ns ticks)
        hpet_timer(t, 1, TN_LEVEL, now + 100_000)      # 1 ms ahead
        t.step(10_000_000)
        status = t.read("q", HPET + HPET_STATUS)
        return {"counter": now, "past_fired": bool(status & 1),
                "future_fired": bool(status & 2)}


def fsb_route_after_reset(binary: str | Path) -> int:
    """HPET timer 0's FSB route after QMP system_reset, which QEMU's S3
    wakeup goes through too: 0 on hardware, where the HPET loses power."""
    sock = f"hld-probe-{os.getpid()}-{secrets.token_hex(4)}"
    with QTest(binary, ["-global", "hpet.msi=on", "-chardev",
                        f"socket,id=qmp0,path={sock},abstract=on,server=on,wait=off",
                        "-mon", "chardev=qmp0,mode=control"]) as t:
        route = HPET + 0x100 + 0x10
        t.write("q", route, (0xfee00000 << 32) | 0x30)
        if t.read("q", route) != (0xfee00000 << 32) | 0x30:
            raise HarnessError("qtest: the HPET's FSB route did not take the value written")
        from qemu.qmp.legacy import QEMUMonitorProtocol
        qmp = QEMUMonitorProtocol("\0" + sock)
        try:
            qmp.connect()
            qmp.cmd("system_reset")
        finally:
            qmp.close()
        # The reset is done by the main loop, after the command returns.
        deadline = time.monotonic() + 5
        while True:
            value = t.read("q", route)
            if value == 0 or time.monotonic() >= deadline:
                return value
            t.step(1_000_000)


def probe_features(binary: str | Path) -> tuple[str, ...]:
    """Each patched feature, probed for real."""
    binary = str(binary)
    found = []
    try:
        fsts, reason, sid = fsb_fault(binary, remappable=True)
        if reason == 0x26 and sid == HPET_SOURCE_ID:
            found.append("hpet-remap")
        fsts, reason, sid = fsb_fault(binary, remappable=False)
        if reason == 0x25:
            found.append("cfi")
        if fsb_route_after_reset(binary) == 0:
            found.append("hpet-route-reset")
    except HarnessError as e:
        _log(f"qemu: probe of {binary} under qtest failed: {e}")
    if "hpet-scope" in _device_props(binary, "intel-iommu"):
        found.append("hpet-scope")
    if "strict-comparator" in _device_props(binary, "hpet"):
        found.append("strict-comparator")
    return tuple(f for f in FEATURES if f in found)


@functools.lru_cache(maxsize=None)
def _check_cached(binary: str) -> Qemu:
    version = qemu_version(binary)
    return Qemu(binary=Path(shutil.which(binary) or binary), version=version,
                features=probe_features(binary) if version[:2] >= VERSION[:2] else ())


def check(binary: str | Path, require: bool | tuple = False) -> Qemu:
    """Version and features of a QEMU binary. require=True: all patched
    features, or a tuple of the ones needed; a QEMU too old or lacking one
    is refused with one line naming what it lacks."""
    q = _check_cached(str(binary))
    if not require:
        return q
    wanted = tuple(FEATURES) if require is True else tuple(require)
    if q.version[:2] < VERSION[:2]:
        raise HarnessError(f"{q.binary} is QEMU {'.'.join(map(str, q.version))}, too old: "
                           f"the patched features ({', '.join(wanted)}) need "
                           f"{VERSION[0]}.{VERSION[1]} with qemu/patches")
    missing = q.missing(wanted)
    if missing:
        raise HarnessError(f"{q.binary} (QEMU {'.'.join(map(str, q.version))}) lacks "
                           + ", ".join(missing) + ": build it with qemu/patches "
                           "(python -m harness qemu)")
    return q


def resolve(require: bool | tuple = True, explicit: str | None = None) -> Qemu:
    """`explicit` (the command line's QEMU=/path/to/qemu-system-x86_64) if
    given, checked; else the build."""
    if explicit:
        return check(explicit, require)
    q = build_qemu()
    return check(q.binary, require) if require else q
