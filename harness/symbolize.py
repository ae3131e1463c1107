"""Turn the frames of a lockup report into file:line.

A report names code as `function+0x54/0xb0 [module]`. The symbol table of
vmlinux, or of the module's .ko, gives the function's address; the DWARF
line table, when the object has one, gives the source line. Our kernels
are built without debug info (it would double the build time), so vmlinux
frames get an address only; our injection module is built with -g, so its
frames get a line.

A .ko is relocatable: every section starts at address 0, so a line-table
address in .text and one in .init.text look the same. Before reading the
DWARF, each code section's symbols are moved to a base of their own in a
copy of the file; the relocations pyelftools applies then keep sections
apart.
"""
import io
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.constants import SH_FLAGS
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from harness.errors import HarnessError

# "RIP: 0010:lockup_fn+0x54/0xb0 [lockup_inject]", " ? kthread_park+0x90/0x90"
FRAME = re.compile(r"(?P<unreliable>\? )?(?P<func>[A-Za-z_][\w.]*)\+0x(?P<off>[0-9a-f]+)"
                   r"/0x(?P<size>[0-9a-f]+)(?: \[(?P<module>\w+)\])?")
SECTION_SPAN = 1 << 28      # room per code section of a relocatable object


@dataclass(frozen=True)
class Frame:
    line: int               # index of the console line
    func: str
    offset: int
    size: int
    module: str | None      # None: vmlinux
    reliable: bool          # False for the "? " frames the unwinder guesses


def frames(text: str) -> list[Frame]:
    """Every function+off/size frame of a console log, in order."""
    out = []
    for i, line in enumerate(text.splitlines()):
        body = line.split("] ", 2)[-1] if line.startswith("[") else line
        if "+0x" not in body:
            continue
        for m in FRAME.finditer(body):
            out.append(Frame(i, m["func"], int(m["off"], 16), int(m["size"], 16),
                             m["module"], m["unreliable"] is None))
    return out


def _relocatable_copy(data: bytes, elf: ELFFile) -> tuple[bytes, dict[int, int]]:
    """data with every symbol of a code section moved to that section's
    own base; returns the copy and the bases by section index."""
    bases = {i: i * SECTION_SPAN for i, s in enumerate(elf.iter_sections())
             if s["sh_flags"] & SH_FLAGS.SHF_EXECINSTR}
    symtab = elf.get_section_by_name(".symtab")
    if symtab is None:
        return data, bases
    out = bytearray(data)
    entsize, offset = symtab["sh_entsize"], symtab["sh_offset"]
    for n, sym in enumerate(symtab.iter_symbols()):
        shndx = sym["st_shndx"]
        if isinstance(shndx, int) and shndx in bases:
            at = offset + n * entsize + 8        # Elf64_Sym.st_value
            struct.pack_into("<Q", out, at, sym["st_value"] + bases[shndx])
    return bytes(out), bases


class ObjectSymbols:
    """Functions and (if present) line table of vmlinux or one module."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            data = self.path.read_bytes()
            elf = ELFFile(io.BytesIO(data))
        except (OSError, ELFError) as e:
            raise HarnessError(f"cannot read {path} as ELF: {e}") from None
        if elf["e_type"] == "ET_REL":
            data, _ = _relocatable_copy(data, elf)
            elf = ELFFile(io.BytesIO(data))
        self.elf = elf
        self.funcs: dict[str, tuple[int, int]] = {}
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None:
            raise HarnessError(f"{path} has no symbol table (stripped?)")
        for sym in symtab.iter_symbols():
            kind = sym["st_info"]["type"]
            # Assembly entry points (ret_from_fork_asm) have no type.
            if kind == "STT_FUNC" and sym.name:
                self.funcs[sym.name] = (sym["st_value"], sym["st_size"])
            elif kind == "STT_NOTYPE" and sym.name and sym["st_shndx"] != "SHN_UNDEF":
                self.funcs.setdefault(sym.name, (sym["st_value"], sym["st_size"]))
        self.has_lines = elf.get_section_by_name(".debug_line") is not None
        self._dwarf = None

    def address(self, frame: Frame) -> int | None:
        found = self.funcs.get(frame.func)
        return None if found is None else found[0] + frame.offset

    def line_of(self, address: int) -> tuple[str, int] | None:
        """(file, line) of the instruction at address, from the DWARF line
        table; None without debug info or outside every sequence."""
        if not self.has_lines:
            return None
        if self._dwarf is None:
            self._dwarf = self.elf.get_dwarf_info()
        for cu in self._dwarf.iter_CUs():
            prog = self._dwarf.line_program_for_CU(cu)
            if prog is None:
                continue
            prev = None
            for entry in prog.get_entries():
                state = entry.state
                if state is None:
                    continue
                if prev is not None and prev.address <= address < state.address:
                    return self._file_name(prog, prev.file), prev.line
                prev = None if state.end_sequence else state
        return None

    @staticmethod
    def _file_name(prog, index: int) -> str:
        version = prog.header["version"]
        entry = prog["file_entry"][index if version >= 5 else index - 1]
        name = entry.name.decode()
        dirs = prog["include_directory"]
        dir_index = entry.dir_index if version >= 5 else entry.dir_index - 1
        if not name.startswith("/") and 0 <= dir_index < len(dirs):
            name = f"{dirs[dir_index].decode()}/{name}"
        return name


def where(frame: Frame, objects: dict[str | None, ObjectSymbols]) -> str:
    """What can be said of one frame: file:line, or an address, or why not."""
    obj = objects.get(frame.module)
    if obj is None:
        return f"(no object for module {frame.module})"
    addr = obj.address(frame)
    if addr is None:
        return f"({frame.func} not in {obj.path.name}'s symbol table)"
    found = obj.line_of(addr)
    if found is not None:
        return f"{found[0]}:{found[1]}"
    if frame.module is None:
        return f"0x{addr:x} (vmlinux has no debug info)"
    return f"(no line table in {obj.path.name})"


def annotate(text: str, objects: dict[str | None, ObjectSymbols]) -> list[str]:
    """One line per frame: the console line's frame and where it is."""
    lines = []
    for f in frames(text):
        mod = f" [{f.module}]" if f.module else ""
        guess = "? " if not f.reliable else ""
        lines.append(f"{f.line + 1}: {guess}{f.func}+0x{f.offset:x}/0x{f.size:x}{mod}"
                     f"  {where(f, objects)}")
    return lines
