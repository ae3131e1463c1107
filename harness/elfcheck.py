"""Before a boot: is the kernel the one it claims to be, and will it accept
every module we put in the initramfs? Read from the ELF files themselves.

- vmlinux's linux_banner must carry the same release and build stamp as the
  bzImage we boot (the version string in its setup header).
- The detector under test must be in vmlinux (its NMI handler's symbol).
- Each module's vermagic (.modinfo) must equal the kernel's (the
  `vermagic` string in vmlinux): the kernel refuses a module otherwise, and
  a scenario would then fail for a reason that has nothing to do with it.
- With CONFIG_IKCONFIG the kernel carries its own .config (gzip between
  kernel_config_data and kernel_config_data_end): every option our config
  fragments ask for must be in it, so a vmlinux from some other build
  (a stale tree, a KERNEL_SRC= configured by hand) is caught even when its
  release string happens to match.

Reading the vmlinux symbol table with pyelftools takes seconds: the result
is kept next to vmlinux, keyed by its size and mtime.
"""
import json
import re
import zlib
from pathlib import Path

from elftools.elf.elffile import ELFFile

from harness import detectors, kconfig
from harness.errors import HarnessError

# The symbol that proves a detector is built in (detectors.Detector.symbol).
DETECTOR_SYMBOLS = {d.name: d.symbol for d in detectors.DETECTORS.values() if d.symbol}
_IKCONFIG = ("kernel_config_data", "kernel_config_data_end")
_WANTED = ("linux_banner", "vermagic", *_IKCONFIG, *DETECTOR_SYMBOLS.values())


def _cstring(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("utf-8", "replace")


def _read_symbols(vmlinux: Path) -> dict:
    """linux_banner and vermagic strings, and which detector symbols exist."""
    out: dict = {"present": []}
    with open(vmlinux, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None:
            raise HarnessError(f"{vmlinux} has no symbol table")
        found = {}
        for sym in symtab.iter_symbols():
            if sym.name in _WANTED and sym.name not in found:
                found[sym.name] = sym
                if len(found) == len(_WANTED):
                    break
        for name in ("linux_banner", "vermagic"):
            sym = found.get(name)
            if sym is None:
                raise HarnessError(f"{vmlinux} has no {name} symbol: not a Linux vmlinux?")
            sec = elf.get_section(sym["st_shndx"])
            off = sym["st_value"] - sec["sh_addr"]
            out[name] = _cstring(sec.data()[off:off + sym["st_size"]])
        out["present"] = sorted(n for n in found if n in DETECTOR_SYMBOLS.values())
        out["ikconfig"] = _embedded_config(elf, found, vmlinux)
    return out


def _embedded_config(elf: ELFFile, found: dict, vmlinux: Path) -> str | None:
    """The .config built into vmlinux (CONFIG_IKCONFIG), or None."""
    if not all(n in found for n in _IKCONFIG):
        return None
    start, end = (found[n]["st_value"] for n in _IKCONFIG)
    sec = elf.get_section(found["kernel_config_data"]["st_shndx"])
    blob = sec.data()[start - sec["sh_addr"]:end - sec["sh_addr"]]
    try:
        return zlib.decompressobj(wbits=31).decompress(blob).decode("utf-8", "replace")
    except zlib.error as e:
        raise HarnessError(f"{vmlinux}: the embedded config is not gzip data ({e})") \
            from None


def vmlinux_facts(vmlinux: Path) -> dict:
    vmlinux = Path(vmlinux)
    if not vmlinux.is_file():
        raise HarnessError(f"vmlinux {vmlinux} does not exist")
    st = vmlinux.stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "facts": 2}
    cache = vmlinux.with_name(vmlinux.name + ".facts.json")
    try:
        cached = json.loads(cache.read_text())
        if cached.get("stamp") == stamp:
            return cached["facts"]
    except (OSError, ValueError):
        pass
    facts = _read_symbols(vmlinux)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"stamp": stamp, "facts": facts}))
    tmp.replace(cache)
    return facts


def bzimage_version(bzimage: Path) -> str:
    """The version string the boot protocol points to (header field
    kernel_version at 0x20e, an offset from 0x200), e.g.
    '6.12.117 (root@host) #1 SMP PREEMPT_DYNAMIC Mon Nov 23 ...'."""
    data = Path(bzimage).read_bytes()[:0x10000]
    if len(data) < 0x210 or data[0x202:0x206] != b"HdrS":
        raise HarnessError(f"{bzimage} is not an x86 bzImage (no HdrS boot header)")
    ptr = int.from_bytes(data[0x20e:0x210], "little") + 0x200
    return _cstring(data[ptr:ptr + 256])


def module_vermagic(ko: Path) -> str:
    with open(ko, "rb") as f:
        try:
            sec = ELFFile(f).get_section_by_name(".modinfo")
        except Exception as e:   # pyelftools raises several kinds on junk
            raise HarnessError(f"{ko} is not an ELF module: {e}") from None
        if sec is None:
            raise HarnessError(f"{ko} has no .modinfo section: not a kernel module")
        for entry in sec.data().split(b"\0"):
            if entry.startswith(b"vermagic="):
                return entry[len(b"vermagic="):].decode("utf-8", "replace")
    raise HarnessError(f"{ko} has no vermagic")


def _build_stamp(version: str) -> str:
    """'#1 SMP PREEMPT_DYNAMIC <date>' from either version string."""
    m = re.search(r"#\d+.*$", version)
    return m.group(0).strip() if m else ""


def check_config(vmlinux: Path, fragments: list[Path]) -> bool:
    """The fragments' options against the config built into vmlinux;
    False if it has none (no CONFIG_IKCONFIG): nothing to check."""
    text = vmlinux_facts(vmlinux).get("ikconfig")
    if text is None:
        return False
    problems = kconfig.fragment_problems(fragments, kconfig.parse_config(text, "ikconfig"))
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise HarnessError(f"{vmlinux} was not built from our config fragments: in its "
                           f"embedded config " + "; ".join(problems[:3]) + more)
    return True


def check(bzimage: Path, vmlinux: Path, release: str, detector: str | None,
          modules: dict, fragments: list[Path] = ()) -> None:
    """Raise HarnessError saying what does not match; return if all does."""
    facts = vmlinux_facts(vmlinux)
    banner, boot = facts["linux_banner"], bzimage_version(bzimage)
    if not banner.startswith(f"Linux version {release} "):
        raise HarnessError(f"{vmlinux} is release {banner.split()[2]!r}, "
                           f"not {release!r} as its build says")
    if not boot.startswith(f"{release} ") or _build_stamp(boot) != _build_stamp(banner):
        raise HarnessError(f"{bzimage} ({boot!r}) is not the kernel of {vmlinux} "
                           f"({banner.strip()!r})")
    want = DETECTOR_SYMBOLS.get(detector or "")
    if want and want not in facts["present"]:
        raise HarnessError(f"{vmlinux} lacks {want}: the {detector} detector is not "
                           f"built in")
    check_config(vmlinux, list(fragments))
    for name, ko in sorted(modules.items()):
        magic = module_vermagic(ko)
        if magic.strip() != facts["vermagic"].strip():
            raise HarnessError(f"module {name} ({ko}) has vermagic {magic!r}, the "
                               f"kernel {release} wants {facts['vermagic']!r}")
