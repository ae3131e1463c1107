"""Tests for harness.console_events.

The parser is checked on real console logs in tests/logs/ (see the README
there for where each one comes from). Kinds that no real log shows yet are
checked against the kernel's own printk format strings, and those strings are
verified against the kernel source when it is on the machine.
"""

import json
import os
import random
import re
from pathlib import Path

import pytest

from harness.console_events import (
    KINDS,
    Event,
    format_events,
    parse_file,
    parse_lines,
    parse_text,
    summarize,
)

LOG_DIR = Path(__file__).parent / "logs"
ALL_LOGS = sorted(LOG_DIR.glob("*.log"))

# Expected events per log file, in order: (kind, kernel time, cpu, line).
# Add an entry when adding a log (guest-*.log included).
EXPECTED = {
    # Captured from this project's guests (buddy detector, TCG); the counts
    # of each kind were checked against grep of the raw lines.
    "guest-buddy-1cpu-unseen-hard-lockup.log": [
        ("boot_complete", 1.20717, None, 218),  # running /init
        ("boot_complete", 1.505228, None, 220),  # guest agent ready
        ("lockup_injected", 7.656049, 0, 224),  # irqoff lockup injected on cpu 0 for 14000 ms
        ("lockup_released", 21.658041, 0, 225),  # lockup released on cpu 0 after 14001 ms
        ("lockup_injected", 21.685047, 0, 226),  # preemptoff lockup injected on cpu 0 for 12800 ms
        ("soft_lockup", 27.639569, 0, 228),  # soft lockup on cpu 0, stuck for 5s [lockup_inject/0:45]
        ("soft_lockup", 34.039297, 0, 253),  # soft lockup on cpu 0, stuck for 11s [lockup_inject/0:45]
        ("lockup_released", 34.485418, 0, 278),  # lockup released on cpu 0 after 12800 ms
    ],
    "guest-buddy-2cpu-hardlockup-panic.log": [
        ("boot_complete", 1.327466, None, 231),  # running /init
        ("boot_complete", 1.679482, None, 233),  # guest agent ready
        ("lockup_injected", 1.734524, 1, 234),  # irqoff lockup injected on cpu 1 for 14000 ms
        ("hard_lockup", 7.525077, 1, 235),  # hard LOCKUP on cpu 1
        ("nmi_slow", 7.540849, 1, 262),  # nmi_cpu_backtrace_handler took 12.729 ms: it printed the locked CPU's backtrace
        ("panic", 7.54188, 0, 263),  # Kernel panic: Hard LOCKUP
    ],
    "guest-buddy-2cpu-iommu-lockups.log": [
        ("boot_complete", 1.14614, None, 240),  # running /init
        ("boot_complete", 1.376488, None, 242),  # guest agent ready
        ("lockup_injected", 7.517996, 0, 246),  # irqoff lockup injected on cpu 0 for 14000 ms
        ("hard_lockup", 12.603829, 0, 247),  # hard LOCKUP on cpu 0
        ("nmi_slow", 12.61734, 0, 274),  # nmi_cpu_backtrace_handler took 10.849 ms: it printed the locked CPU's backtrace
        ("soft_lockup", 19.004052, 1, 275),  # soft lockup on cpu 1, stuck for 11s [sh:48]
        ("lockup_released", 21.519052, 0, 316),  # lockup released on cpu 0 after 14000 ms
        ("lockup_injected", 21.549701, 1, 317),  # irqoff lockup injected on cpu 1 for 14000 ms
        ("hard_lockup", 28.498143, 1, 319),  # hard LOCKUP on cpu 1
        ("lockup_released", 35.550801, 1, 346),  # lockup released on cpu 1 after 14000 ms
        ("lockup_injected", 35.587639, 1, 347),  # preemptoff lockup injected on cpu 1 for 12800 ms
        ("soft_lockup", 41.403992, 1, 348),  # soft lockup on cpu 1, stuck for 5s [lockup_inject/1:55]
        ("soft_lockup", 47.804127, 1, 373),  # soft lockup on cpu 1, stuck for 11s [lockup_inject/1:55]
        ("lockup_released", 48.388179, 1, 398),  # lockup released on cpu 1 after 12800 ms
    ],
    "guest-buddy-4cpu-lkdtm-hung-task.log": [
        ("boot_complete", 1.780559, None, 230),  # running /init
        ("boot_complete", 2.125584, None, 232),  # guest agent ready
        ("lockup_injected", 2.233661, None, 234),  # LKDTM HUNG_TASK triggered
        ("hung_task", 9.384563, None, 238),  # hung task sh:60 (>4s)
    ],
    "guest-buddy-4cpu-lkdtm-softlockup-knock-on.log": [
        ("boot_complete", 1.832622, None, 230),  # running /init
        ("boot_complete", 2.182035, None, 232),  # guest agent ready
        ("lockup_injected", 2.265438, None, 234),  # LKDTM SOFTLOCKUP triggered
        ("soft_lockup", 7.896356, 1, 238),  # soft lockup on cpu 1, stuck for 5s [migration/1:20]
        ("soft_lockup", 8.009883, 2, 269),  # soft lockup on cpu 2, stuck for 6s [sh:59]
    ],
    "guest-buddy-8cpu-lockups.log": [
        ("boot_complete", 2.70323, None, 241),  # running /init
        ("boot_complete", 3.081647, None, 243),  # guest agent ready
        ("lockup_injected", 9.253958, 0, 247),  # irqoff lockup injected on cpu 0 for 14000 ms
        ("hard_lockup", 13.683185, 0, 248),  # hard LOCKUP on cpu 0
        ("nmi_slow", 13.69838, 0, 275),  # nmi_cpu_backtrace_handler took 12.545 ms: it printed the locked CPU's backtrace
        ("lockup_released", 23.254911, 0, 276),  # lockup released on cpu 0 after 14000 ms
        ("lockup_injected", 23.32279, 4, 278),  # irqoff lockup injected on cpu 4 for 14000 ms
        ("hard_lockup", 29.92399, 4, 279),  # hard LOCKUP on cpu 4
        ("lockup_released", 37.325033, 4, 306),  # lockup released on cpu 4 after 14001 ms
        ("lockup_injected", 37.399916, 7, 307),  # irqoff lockup injected on cpu 7 for 14000 ms
        ("hard_lockup", 42.388092, 7, 308),  # hard LOCKUP on cpu 7
        ("lockup_released", 51.401265, 7, 335),  # lockup released on cpu 7 after 14000 ms
        ("lockup_injected", 51.483943, 7, 336),  # preemptoff lockup injected on cpu 7 for 12800 ms
        ("soft_lockup", 57.68514, 7, 337),  # soft lockup on cpu 7, stuck for 6s [lockup_inject/7:93]
        ("soft_lockup", 64.085004, 7, 362),  # soft lockup on cpu 7, stuck for 12s [lockup_inject/7:93]
        ("lockup_released", 64.284402, 7, 387),  # lockup released on cpu 7 after 12800 ms
    ],
    "seed003-intremap-oops-partial.log": [
        ("oops", 8.466614, 0, 22),  # BUG: kernel NULL pointer dereference
        ("oops", 8.489757, 0, 26),  # Oops: 0010 [#1]; cpu from the "CPU: 0 PID: 0" line
    ],
    "seed003-intremap-panic.log": [
        # Only one panic: the "---[ end Kernel panic" trailer is not another.
        ("panic", 9.766456, None, 36),
    ],
    "seed003-null-deref-oops.log": [
        ("oops", 1.830276, 0, 1),
        ("oops", 1.852915, 0, 5),
    ],
    "seed003-working-boot.log": [
        # Printed from task context [T5]: a task id is not a CPU.
        ("detector_enabled", 9.062516, None, 43),
    ],
    "seed003-dmar-faults.log": [
        # dmesg -T wall-clock stamps are not kernel timestamps.
        ("dmar_fault", None, None, 1),
        ("dmar_fault", None, None, 2),
        ("dmar_fault", None, None, 7),
        ("dmar_fault", None, None, 8),
    ],
}


def _file_lines(path):
    text = path.read_bytes().decode("utf-8", errors="replace")
    return [line.rstrip("\r") for line in text.split("\n")]


# --- every log in tests/logs -------------------------------------------------

@pytest.mark.parametrize("path", ALL_LOGS, ids=[p.name for p in ALL_LOGS])
def test_every_log_parses_sanely(path):
    events = parse_file(path)
    lines = _file_lines(path)
    for event in events:
        assert event.kind in KINDS
        assert 1 <= event.line <= len(lines)
        assert event.text == lines[event.line - 1]
        assert event.time is None or event.time >= 0
        assert event.cpu is None or event.cpu >= 0
        assert event.title
    assert [e.line for e in events] == sorted(e.line for e in events)
    # Both output forms cover every event.
    assert json.loads(format_events(events, as_json=True)) == [e.to_dict() for e in events]
    table = format_events(events, as_json=False).splitlines()
    assert len(table) == len(events)
    assert all(e.kind in row and e.title in row for e, row in zip(events, table))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_expected_events(name):
    events = parse_file(LOG_DIR / name)
    got = [(e.kind, e.time, e.cpu, e.line) for e in events]
    assert got == EXPECTED[name]


def test_expectation_table_names_existing_logs():
    assert {p.name for p in ALL_LOGS} >= set(EXPECTED)


# --- the seed003 logs in detail ----------------------------------------------

def test_seed003_oops_titles():
    events = parse_file(LOG_DIR / "seed003-intremap-oops-partial.log")
    assert events[0].title == "BUG: kernel NULL pointer dereference at 0000000000000000"
    assert events[1].title == "Oops 0010 [#1]"
    assert "[    T0] Oops: 0010 [#1] SMP KASAN PTI" in events[1].text


def test_seed003_panic_reason_and_time():
    (panic,) = parse_file(LOG_DIR / "seed003-intremap-panic.log")
    assert panic.kind == "panic"
    assert panic.title == "Kernel panic: Fatal exception"
    assert panic.time == pytest.approx(9.766456)


def test_seed003_dmar_faults():
    events = parse_file(LOG_DIR / "seed003-dmar-faults.log")
    assert [e.title for e in events] == [
        "DMAR fault status reg 2",
        "DMAR INTR-REMAP fault from 42:00.2, reason 37",
        "DMAR fault status reg 102",
        "DMAR INTR-REMAP fault from 42:00.2, reason 37",
    ]


def test_seed003_summary():
    events = []
    for name in EXPECTED:
        if name.startswith("seed003-"):
            events += parse_file(LOG_DIR / name)
    counts = summarize(events)
    assert set(counts) == set(KINDS)
    assert counts["oops"] == 4 and counts["panic"] == 1 and counts["dmar_fault"] == 4
    assert counts["detector_enabled"] == 1 and counts["hard_lockup"] == 0


# --- the same real logs, wrapped the ways consoles and tools wrap them ---------

WRAPPINGS = {
    "crlf": lambda line: line + "\r",
    "ansi": lambda line: "\x1b[0m\x1b[1;31m" + line + "\x1b[0m",
    "syslog": lambda line: "Sep 25 15:29:13 dl560 kernel: " + line,
    "journal-iso": lambda line: "2020-09-25T15:29:13+0000 dl560 kernel: " + line,
    "level": lambda line: "<4>" + line,
}


@pytest.mark.parametrize("wrap", sorted(WRAPPINGS))
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_wrapped_logs_give_same_events(name, wrap):
    lines = _file_lines(LOG_DIR / name)
    plain = parse_lines(lines)
    wrapped = parse_lines(WRAPPINGS[wrap](line) for line in lines)
    key = lambda e: (e.kind, e.time, e.cpu, e.title, e.line)
    assert [key(e) for e in wrapped] == [key(e) for e in plain]


def test_parse_lines_accepts_newlines_and_agrees_with_parse_file():
    path = LOG_DIR / "seed003-null-deref-oops.log"
    with open(path, encoding="utf-8", newline="") as f:
        assert parse_lines(f) == parse_file(path)
    assert parse_text(path.read_text(encoding="utf-8")) == parse_file(path)


def test_caller_cpu_context_is_used_only_when_the_message_has_no_cpu():
    # The seed's panic line, as printed from CPU context on another machine.
    panic = "[    9.766456][    C2] Kernel panic - not syncing: Fatal exception"
    lockup = "[   30.100000][    C0] watchdog: Watchdog detected hard LOCKUP on cpu 1"
    events = parse_lines([panic, lockup])
    assert [(e.kind, e.cpu) for e in events] == [("panic", 2), ("hard_lockup", 1)]


# --- kernel printk formats (for kinds no real log in tests/logs shows yet) ----


# (source file in Linux 6.12 or None, pr_fmt prefix, printk format, args,
#  expected kind or None for "no event", expected cpu)
KERNEL_FORMATS = [
    ("kernel/watchdog.c", "watchdog: ", "Watchdog detected hard LOCKUP on cpu %d", (1,), "hard_lockup", 1),
    (None, "watchdog: ", "CPU%u: Watchdog detected hard LOCKUP on cpu %u", (3, 1), "hard_lockup", 1),  # after 6.12
    (None, "NMI watchdog: ", "Watchdog detected hard LOCKUP on cpu %d", (2,), "hard_lockup", 2),  # perf, pre-4.19
    ("kernel/watchdog.c", "watchdog: ", "BUG: soft lockup - CPU#%d stuck for %us! [%s:%d]",
     (3, 22, "kworker/3:1", 57), "soft_lockup", 3),
    ("kernel/rcu/tree_stall.h", "rcu: ", "INFO: %s detected stalls on CPUs/tasks:", ("rcu_sched",), "rcu_stall", None),
    ("kernel/rcu/tree_stall.h", "rcu: ", "INFO: %s self-detected stall on CPU", ("rcu_preempt",), "rcu_stall", None),
    ("kernel/rcu/tree_exp.h", "rcu: ", "INFO: %s detected expedited stalls on CPUs/tasks: {",
     ("rcu_preempt",), "rcu_stall", None),
    ("kernel/hung_task.c", "", "INFO: task %s:%d blocked for more than %ld seconds.",
     ("khungtaskd", 12, 10), "hung_task", None),
    ("kernel/panic.c", "", "Kernel panic - not syncing: %s", ("Hard LOCKUP",), "panic", None),
    ("kernel/panic.c", "", "---[ end Kernel panic - not syncing: %s ]---", ("Hard LOCKUP",), None, None),
    ("kernel/panic.c", "", "WARNING: CPU: %d PID: %d at %s:%d %pS",
     (1, 0, "kernel/foo.c", 12, "func+0x1/0x2"), "warning", 1),
    ("arch/x86/mm/fault.c", "", "BUG: kernel NULL pointer dereference, address: %px", ("0000000000000008",), "oops", None),
    ("arch/x86/mm/fault.c", "", "BUG: unable to handle page fault for address: %px",
     ("ffffc90000a3b000",), "oops", None),
    ("arch/x86/kernel/dumpstack.c", "", "Oops: %s: %04lx [#%d]%s%s%s%s%s",
     ("Oops", 2, 1, " PREEMPT", " SMP", "", "", " NOPTI"), "oops", None),
    ("arch/x86/kernel/dumpstack.c", "", "Oops: %s: %04lx [#%d]%s%s%s%s%s",
     ("general protection fault, probably for non-canonical address 0xdffffc0000000000",
      0, 1, " PREEMPT", " SMP", "", " KASAN", " NOPTI"), "gpf", None),
    ("lib/bug.c", "", "kernel BUG at %s:%u!", ("mm/foo.c", 123), "bug", None),
    ("arch/x86/kernel/nmi.c", "", "Uhhuh. NMI received for unknown reason %02x on CPU %d.", (0x30, 2), "unknown_nmi", 2),
    ("arch/x86/kernel/nmi.c", "", "Dazed and confused, but trying to continue", (), "unknown_nmi", None),
    ("arch/x86/kernel/nmi.c", "", "INFO: NMI handler (%ps) took too long to run: %lld.%03d msecs",
     ("hld_nmi_handler", 11, 755), "nmi_slow", None),
    ("drivers/iommu/intel/dmar.c", "DMAR: ", "DRHD: handling fault status reg %x", (2,), "dmar_fault", None),
    ("drivers/iommu/intel/dmar.c", "DMAR: ",
     "[INTR-REMAP] Request device [%02x:%02x.%d] fault index 0x%llx [fault reason 0x%02x] %s",
     (0xF0, 0x1F, 0, 0, 0x25, "Blocked a compatibility format interrupt request"), "dmar_fault", None),
    ("drivers/iommu/intel/dmar.c", "DMAR: ",
     "[%s NO_PASID] Request device [%02x:%02x.%d] fault addr 0x%llx [fault reason 0x%02x] %s",
     ("DMA Read", 0, 2, 0, 0x7F000, 6, "PTE Read access is not set"), "dmar_fault", None),
    ("drivers/iommu/amd/iommu.c", "AMD-Vi: ",
     "Event logged [IO_PAGE_FAULT device=%04x:%02x:%02x.%x domain=0x%04x address=0x%llx flags=0x%04x]",
     (0, 0, 0x14, 0, 0, 0xFFF0, 0x20), "dmar_fault", None),
    ("drivers/iommu/amd/iommu.c", "iommu ivhd0: AMD-Vi: ",  # dev_err() adds "driver device: "
     "Event logged [INVALID_DEVICE_REQUEST device=%04x:%02x:%02x.%x pasid=0x%05x address=0x%llx flags=0x%04x]",
     (0, 0, 0, 0, 0, 0xFEE00000, 0xA), "dmar_fault", None),
    ("init/main.c", "", "Run %s as init process", ("/init",), "boot_complete", None),
    ("kernel/watchdog_perf.c", "NMI watchdog: ", "Enabled. Permanently consumes one hw-PMU counter.",
     (), "detector_enabled", None),
    ("kernel/watchdog_perf.c", "NMI watchdog: ", "Perf NMI watchdog permanently disabled", (), "detector_disabled", None),
    ("kernel/watchdog.c", "watchdog: ", "Hard watchdog permanently disabled", (), "detector_disabled", None),
    ("lib/test_lockup.c", "test_lockup: ", "Start on CPU%d", (1,), "lockup_injected", 1),
    ("drivers/misc/lkdtm/core.c", "lkdtm: ", "Performing direct entry %s", ("HARDLOCKUP",),
     "lockup_injected", None),
    ("lib/test_lockup.c", "test_lockup: ", "Finish on CPU%d in %lld ns", (1, 8000000000), "lockup_released", 1),
]


def _render(fmt, args):
    """printf the way the kernel would, for the conversions used above."""
    fmt = re.sub(r"%p[xsS]", "%s", fmt)
    fmt = re.sub(r"%(0?\d*)(?:ll|l)?([dux])", lambda m: "%" + m[1] + ("d" if m[2] == "u" else m[2]), fmt)
    return fmt % args


@pytest.mark.parametrize("source, prefix, fmt, args, kind, cpu", KERNEL_FORMATS,
                         ids=[f"{i}-{f[4] or 'no_event'}" for i, f in enumerate(KERNEL_FORMATS)])
def test_kernel_format(source, prefix, fmt, args, kind, cpu):
    line = "[  123.456789] " + prefix + _render(fmt, args)
    events = parse_lines([line])
    if kind is None:
        assert events == []
        return
    (event,) = events
    assert (event.kind, event.cpu, event.time) == (kind, cpu, 123.456789)


@pytest.fixture(scope="module")
def ksrc(built):
    """The kernel source the harness builds (or LINUX_SRC)."""
    env = os.environ.get("LINUX_SRC")
    return Path(env) if env else (built[0].build_dir / "source").resolve()


@pytest.mark.parametrize("source, fmt", sorted({(f[0], f[2]) for f in KERNEL_FORMATS if f[0]}))
def test_kernel_format_is_in_source(source, fmt, ksrc):
    # Guards the table above against drifting from what the kernel prints.
    assert fmt in (ksrc / source).read_text(errors="replace")


def test_panic_title_carries_reason():
    (event,) = parse_lines(["[   40.1] Kernel panic - not syncing: Hard LOCKUP"])
    assert event.title == "Kernel panic: Hard LOCKUP"


# --- our own guest-side messages (formats defined by this project) -----------

def test_project_messages():
    lines = [
        "[    1.500000] hpet_hld: enabled on channel 2, handling CPU 0, monitoring CPUs 0-3",
        "[    1.600000] hpet_hld: disabled: interrupt remapping unavailable",
        "[    1.700000] hpet_hld: not used: no free HPET channel",
        "[    2.000000][    T1] harness: agent ready",
        "[   10.000000] lockup_inject: cpu 1: irqoff lockup for 8000 ms",
        "[   18.001000] lockup_inject: cpu 1: released after 8001 ms",
    ]
    got = [(e.kind, e.cpu, e.title) for e in parse_lines(lines)]
    assert got == [
        ("detector_enabled", 0, "HPET hardlockup detector enabled: on channel 2, handling CPU 0, monitoring CPUs 0-3"),
        ("detector_disabled", None, "HPET hardlockup detector disabled: interrupt remapping unavailable"),
        ("detector_disabled", None, "HPET hardlockup detector not used: no free HPET channel"),
        ("boot_complete", None, "guest agent ready"),
        ("lockup_injected", 1, "irqoff lockup injected on cpu 1 for 8000 ms"),
        ("lockup_released", 1, "lockup released on cpu 1 after 8001 ms"),
    ]


# --- garbage ------------------------------------------------------------------

def test_random_bytes_do_not_crash(tmp_path):
    rng = random.Random(20200925)
    real = [p.read_bytes() for p in ALL_LOGS]
    for i in range(300):
        blob = bytearray(rng.randbytes(rng.randrange(0, 4096)))
        if real and i % 2:
            # Splice garbage into a real log, so the parser sees near-misses.
            base = bytearray(rng.choice(real))
            at = rng.randrange(len(base) + 1)
            blob = base[:at] + blob + base[at:]
        path = tmp_path / f"blob{i}.log"
        path.write_bytes(bytes(blob))
        lines = _file_lines(path)
        for event in parse_file(path):
            assert isinstance(event, Event)
            assert event.text == lines[event.line - 1]


def test_very_long_near_miss_lines():
    n = 200_000
    lines = [
        "[    1.000000] " + "x" * n,
        "[    1.000000] INFO: task " + ":" * n,
        "[    1.000000] Oops: " + "a: " * n,
        "[    1.000000] hpet_hld: enabled " + "handling CPU " * (n // 10),
        "[" * n,
        "[    2.000000] Kernel panic - not syncing: " + "y" * n,
        "[    2.000000] Kernel panic - not syncing: " + " " * n + "z",
        "[    2.000000] " + " \t" * n + "[" * n,
        "2020-09-25T" + "1" * n + " " + "h" * n,
    ]
    events = parse_lines(lines)
    assert [(e.kind, e.line) for e in events] == [("detector_enabled", 4), ("panic", 6), ("panic", 7)]


def test_empty_input():
    assert parse_text("") == []
    assert format_events([], as_json=False) == ""
    assert format_events([], as_json=True) == "[]"
    assert summarize([]) == dict.fromkeys(KINDS, 0)
