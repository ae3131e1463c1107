"""Build the guest kernel: source, patch series, config fragments, make.

Builds are cached under the per-user cache directory, keyed by a hash of
everything that goes into them, so an unchanged second run takes seconds.
A build directory only counts as done once its stamp file is written last.
"""
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness import detectors, kconfig
from harness.errors import HarnessError
from harness.paths import (DEBIAN_TARBALL, GUEST_DIR, KERNEL_CONFIG_DIR,
                           PATCH_DIR, cache_dir)

# Bump when the build recipe changes in a way the inputs don't show.
RECIPE_VERSION = "1"

BASE_FRAGMENTS = ("base.config", "lockup.config", "net.config")
# Every detector (harness/detectors.py); the first is the default kernel's.
DETECTORS = tuple(detectors.DETECTORS)
DEFAULT_DETECTOR = DETECTORS[0]
# The detectors with a kernel build of their own (perf runs on the HPET one).
KERNELS = tuple(d.name for d in detectors.DETECTORS.values() if d.kernel == d.name)
EXTMOD_DIR = GUEST_DIR / "modules"


@dataclass(frozen=True)
class Kernel:
    """A built kernel and the modules built against it."""
    build_dir: Path
    bzimage: Path
    vmlinux: Path
    release: str
    modules: dict          # module name -> .ko path
    detector: str
    flavour: str | None = None   # detectors.FLAVOURS; None: the plain kernel

    @property
    def config(self) -> Path:
        return self.build_dir / ".config"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cmd: list[str], log: Path | None = None, cwd: Path | None = None) -> None:
    """Run a build command, printing it exactly; fail with one line."""
    _log("+ " + " ".join(str(c) for c in cmd))
    out = open(log, "ab") if log else None
    try:
        res = subprocess.run([str(c) for c in cmd], cwd=cwd, stdout=out or None,
                             stderr=subprocess.STDOUT if out else None)
    finally:
        if out:
            out.close()
    if res.returncode != 0:
        where = f" (see {log})" if log else ""
        raise HarnessError(f"command failed with exit {res.returncode}: "
                           f"{' '.join(map(str, cmd))}{where}")


def _hash_files(h, paths) -> None:
    for p in paths:
        h.update(str(p.name).encode() + b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")


def series_patches() -> list[Path]:
    """Patches named in kernel-config/patches/series, in order."""
    series = PATCH_DIR / "series"
    return read_series(series) if series.exists() else []


def read_series(series: Path) -> list[Path]:
    """The patches a quilt-style series file names (# starts a comment),
    in order, each beside it; a name without its file is an error."""
    patches = []
    for line in series.read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        p = series.parent / name
        if not p.is_file():
            raise HarnessError(f"patch {name} listed in {series} does not exist")
        patches.append(p)
    return patches


def fragments_for(detector: str, flavour: str | None = None) -> list[Path]:
    """The fragments of a detector's kernel, then its flavour's."""
    extra = detectors.flavour(flavour)
    names = BASE_FRAGMENTS + detectors.get(detector).fragments + \
        (extra.fragments if extra else ())
    frags = [KERNEL_CONFIG_DIR / n for n in names]
    for f in frags:
        if not f.is_file():
            raise HarnessError(f"config fragment {f} does not exist")
    return frags


def _extmod_files() -> list[Path]:
    return sorted(p for p in EXTMOD_DIR.rglob("*")
                  if p.is_file() and (p.suffix in (".c", ".h") or p.name == "Kbuild"))


class CacheLock:
    """An exclusive lock on a cache entry, so parallel builds don't collide."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "w")

    def __enter__(self):
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def ensure_debian_tarball() -> Path:
    if not DEBIAN_TARBALL.is_file():
        raise HarnessError(f"kernel source {DEBIAN_TARBALL} is missing: install "
                           "Debian's linux-source-6.12 (make deps) or set KERNEL_SRC")
    return DEBIAN_TARBALL


# Measured: the extracted, patched tree is 1.7 GiB; one build 0.25 GiB.
SOURCE_BYTES = 2 << 30
BUILD_BYTES = 1 << 30


def need_space(where: Path, need: int, what: str) -> None:
    """Refuse before starting rather than die half way with ENOSPC."""
    probe = Path(where)
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise HarnessError(f"not enough free disk for {what} under {where}: "
                           f"{free / 2**30:.1f} GiB free, need {need / 2**30:.1f} GiB "
                           f"(set HARNESS_CACHE to a bigger file system)")


def prepare_debian_source(patches: list[Path]) -> Path:
    """Extract Debian's tarball once per (tarball, patch series) and patch it."""
    tarball = ensure_debian_tarball()
    st = tarball.stat()
    h = hashlib.sha256(f"{tarball}:{st.st_size}:{st.st_mtime_ns}".encode())
    _hash_files(h, patches)
    key = h.hexdigest()[:16]
    root = cache_dir() / "src"
    final = root / key
    with CacheLock(root / f"{key}.lock"):
        if (final / ".harness-source-ready").exists():
            return final / "linux-source-6.12"
        tmp = root / f"{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        need_space(root, SOURCE_BYTES, "the kernel source")
        tmp.mkdir(parents=True)
        run(["tar", "-xf", tarball, "-C", tmp])
        src = tmp / "linux-source-6.12"
        for p in patches:
            run(["patch", "-p1", "--batch", "--forward", "--quiet", "-i", p], cwd=src)
        (tmp / ".harness-source-ready").write_text("\n".join(p.name for p in patches))
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
    return final / "linux-source-6.12"


def _source_identity(src: Path, user_tree: bool) -> str:
    if not user_tree:
        return str(src)
    # A developer's tree changes under us; hash its HEAD and dirty diff if git.
    try:
        head = subprocess.run(["git", "-C", src, "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout
        diff = subprocess.run(["git", "-C", src, "diff", "HEAD"],
                              capture_output=True, check=True).stdout
        return f"{src.resolve()}:{head.strip()}:{hashlib.sha256(diff).hexdigest()}"
    except (subprocess.CalledProcessError, FileNotFoundError):
        return f"{src.resolve()}:no-git"


def _read_stamp(key_dir: Path) -> Kernel | None:
    stamp = key_dir / "kernel.json"
    if not stamp.exists():
        return None
    d = json.loads(stamp.read_text())
    return Kernel(build_dir=Path(d["build_dir"]), bzimage=Path(d["bzimage"]),
                  vmlinux=Path(d["vmlinux"]), release=d["release"],
                  modules={k: Path(v) for k, v in d["modules"].items()},
                  detector=d["detector"], flavour=d.get("flavour"))


def kernel_key(detector: str = DEFAULT_DETECTOR, kernel_src: str | None = None,
               flavour: str | None = None) -> tuple[str, Path, bool]:
    """Return (cache key, source dir, user tree?) without building anything.
    A flavour's fragments are hashed with the rest: its own key."""
    user_tree = kernel_src is not None
    if user_tree:
        src = Path(kernel_src)
        if not (src / "Makefile").is_file() or not (src / "Kconfig").is_file():
            raise HarnessError(f"KERNEL_SRC={kernel_src} is not a kernel source tree")
        patches: list[Path] = []   # a developer's tree is tested as it is
    else:
        patches = series_patches()
        src = None
    frags = fragments_for(detector, flavour)
    h = hashlib.sha256(RECIPE_VERSION.encode())
    _hash_files(h, patches + frags)
    if user_tree:
        h.update(_source_identity(src, True).encode())
    else:
        st = ensure_debian_tarball().stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(detector.encode())
    return h.hexdigest()[:16], src, user_tree


def build_kernel(detector: str = DEFAULT_DETECTOR, kernel_src: str | None = None,
                 jobs: int | None = None, flavour: str | None = None) -> Kernel:
    detector = detectors.get(detector).kernel
    flavour = detectors.flavour(flavour) and flavour   # "default" is None
    key, src, user_tree = kernel_key(detector, kernel_src, flavour)
    key_dir = cache_dir() / "kernels" / key
    with CacheLock(key_dir.parent / f"{key}.lock"):
        kernel = _read_stamp(key_dir)
        if kernel and kernel.bzimage.exists():
            _log(f"kernel: cached build {key_dir} ({kernel.release}, "
                 f"{detectors.with_flavour(detector, flavour)})")
        else:
            if src is None:
                src = prepare_debian_source(series_patches())
            need_space(key_dir, BUILD_BYTES, "the kernel build")
            kernel = _build(src, key_dir, detector, jobs or os.cpu_count() or 1, flavour)
        # Our guest modules change more often than the kernel: built apart.
        modules = dict(kernel.modules)
        modules.update(_build_extmods(kernel.build_dir, key_dir))
        return dataclasses.replace(kernel, modules=modules)


def configure(src: Path, build: Path, frags: list[Path], log: Path) -> None:
    """allnoconfig + fragments, then check every fragment option survived."""
    make = ["make", "-C", src, f"O={build}"]
    run(make + ["allnoconfig"], log)
    run([src / "scripts/kconfig/merge_config.sh", "-m", "-O", build,
         build / ".config", *frags], log)
    run(make + ["olddefconfig"], log)
    kconfig.check_final_config(frags, build / ".config")


def _build(src: Path, key_dir: Path, detector: str, jobs: int,
           flavour: str | None = None) -> Kernel:
    build = key_dir / "build"
    build.mkdir(parents=True, exist_ok=True)
    log = key_dir / "build.log"
    frags = fragments_for(detector, flavour)
    t0 = time.monotonic()
    configure(src, build, frags, log)
    run(["make", "-C", src, f"O={build}", f"-j{jobs}", "bzImage", "modules"], log)
    modules = {}
    for name, rel in (("test_lockup", "lib/test_lockup.ko"),
                      ("lkdtm", "drivers/misc/lkdtm/lkdtm.ko")):
        modules[name] = build / rel
    release = (build / "include/config/kernel.release").read_text().strip()
    kernel = Kernel(build_dir=build, bzimage=build / "arch/x86/boot/bzImage",
                    vmlinux=build / "vmlinux", release=release, modules=modules,
                    detector=detector, flavour=flavour)
    for p in [kernel.bzimage, kernel.vmlinux, *modules.values()]:
        if not p.exists():
            raise HarnessError(f"build finished but {p} is missing (see {log})")
    stamp = {"build_dir": str(build), "bzimage": str(kernel.bzimage),
             "vmlinux": str(kernel.vmlinux), "release": release,
             "modules": {k: str(v) for k, v in modules.items()},
             "detector": detector, "flavour": flavour,
             "build_seconds": round(time.monotonic() - t0, 1)}
    tmp = key_dir / "kernel.json.tmp"
    tmp.write_text(json.dumps(stamp, indent=1))
    os.rename(tmp, key_dir / "kernel.json")
    _log(f"kernel: built {release} in {stamp['build_seconds']} s -> {key_dir}")
    return kernel


def _build_extmods(build: Path, key_dir: Path) -> dict:
    """Build our guest modules out of tree, in the cache, not in the repo,
    once per version of their sources."""
    h = hashlib.sha256()
    _hash_files(h, _extmod_files())
    root = key_dir / f"extmod-{h.hexdigest()[:12]}"
    modules = {}
    for mod_src in sorted(d for d in EXTMOD_DIR.iterdir() if d.is_dir()):
        dst = root / mod_src.name
        kos = sorted(dst.glob("*.ko")) if (dst / ".built").exists() else []
        if not kos:
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(mod_src, dst)
            run(["make", "-C", build, f"M={dst}", "modules"], key_dir / "extmod.log")
            (dst / ".built").write_text("")
            kos = sorted(dst.glob("*.ko"))
        if not kos:
            raise HarnessError(f"building {mod_src.name} produced no module")
        modules.update({ko.stem: ko for ko in kos})
    return modules
