"""The frame parser on real console logs, and symbolization checked
against binutils (addr2line, nm) on the real kernel and module."""
import re
import subprocess
from pathlib import Path

import pytest

from harness import symbolize

LOGS = Path(__file__).parent / "logs"


def test_frames_of_a_buddy_lockup_report():
    text = (LOGS / "guest-buddy-2cpu-hardlockup-panic.log").read_text()
    frames = symbolize.frames(text)
    rip = [f for f in frames if f.module == "lockup_inject"]
    assert [(f.func, f.offset, f.size) for f in rip] == [("lockup_fn", 0x54, 0xb0)]
    guessed = [f.func for f in frames if not f.reliable]
    assert "kthread_park" in guessed and "kthread" not in guessed
    assert any(f.func == "watchdog_buddy_check_hardlockup" and f.module is None
               for f in frames)
    # Every frame the log has, found: count the "+0x../0x.." in it.
    assert len(frames) == len(re.findall(r"\+0x[0-9a-f]+/0x[0-9a-f]+", text))


def test_no_frames_in_a_clean_boot():
    assert symbolize.frames((LOGS / "seed003-working-boot.log").read_text()) == []


def test_junk_is_not_elf(tmp_path):
    junk = tmp_path / "x.ko"
    junk.write_bytes(b"not an elf file at all")
    with pytest.raises(symbolize.HarnessError, match="cannot read .* as ELF"):
        symbolize.ObjectSymbols(junk)


@pytest.mark.kernel
def test_module_lines_agree_with_addr2line(built):
    """Every instruction offset of lockup_fn, through our symbolizer and
    through addr2line -j .text: the same file:line."""
    kernel, _ = built
    ko = kernel.modules["lockup_inject"]
    obj = symbolize.ObjectSymbols(ko)
    assert obj.has_lines, "lockup_inject is built with -g"
    start, size = obj.funcs["lockup_fn"]
    base = start - start % symbolize.SECTION_SPAN
    offsets = list(range(0, size, 3))
    ours = [obj.line_of(obj.address(symbolize.Frame(0, "lockup_fn", o, size, "lockup_inject",
                                                    True))) for o in offsets]
    res = subprocess.run(["addr2line", "-e", str(ko), "-j", ".text",
                          *(hex(start - base + o) for o in offsets)],
                         capture_output=True, text=True, check=True)
    theirs = [line.split(" (")[0] for line in res.stdout.splitlines()]
    assert len(theirs) == len(ours)
    agree = [o for o, t in zip(ours, theirs) if o and f"{o[0]}:{o[1]}" == t]
    assert len(agree) == len(offsets), list(zip(offsets, ours, theirs))[:10]


@pytest.mark.kernel
def test_vmlinux_addresses_agree_with_nm(built):
    kernel, _ = built
    obj = symbolize.ObjectSymbols(kernel.vmlinux)
    nm = subprocess.run(["nm", str(kernel.vmlinux)], capture_output=True, text=True,
                        check=True).stdout
    want = {m[2]: int(m[1], 16) for m in re.finditer(r"^([0-9a-f]+) [tT] (\w+)$", nm, re.M)}
    for func in ("watchdog_hardlockup_check", "panic", "kthread"):
        frame = symbolize.Frame(0, func, 0x10, 0x20, None, True)
        assert obj.address(frame) == want[func] + 0x10
    said = symbolize.where(symbolize.Frame(0, "panic", 0, 1, None, True), {None: obj})
    if obj.has_lines:                       # a KERNEL_SRC= tree built with DWARF
        assert re.fullmatch(r"\S+\.[ch]:\d+", said), said
    else:
        assert said == f"0x{want['panic']:x} (vmlinux has no debug info)"


def test_executable_with_dwarf_agrees_with_addr2line(tmp_path):
    """The vmlinux path (a linked ELF, absolute addresses) with debug info,
    which our kernels lack: a small program built with -g stands in."""
    src = tmp_path / "prog.c"
    src.write_text("int twice(int x)\n{\n\tint y = x * 2;\n\n\treturn y + 1;\n}\n\n"
                   "int main(int argc, char **argv)\n{\n\treturn twice(argc);\n}\n")
    exe = tmp_path / "prog"
    subprocess.run(["cc", "-g", "-O0", "-no-pie", "-o", str(exe), str(src)], check=True)
    obj = symbolize.ObjectSymbols(exe)
    assert obj.has_lines
    start, size = obj.funcs["twice"]
    offsets = list(range(0, size))
    ours = [obj.line_of(start + o) for o in offsets]
    res = subprocess.run(["addr2line", "-e", str(exe), *(hex(start + o) for o in offsets)],
                         capture_output=True, text=True, check=True)
    theirs = [line.split(" (")[0] for line in res.stdout.splitlines()]
    assert [f"{o[0]}:{o[1]}" if o else None for o in ours] == theirs
    assert {o[1] for o in ours} >= {2, 3, 5}, "the lines of twice() are all there"
