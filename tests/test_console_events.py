"""Tests for harness.console_events.

The parser is checked on real console logs in tests/logs/ (see the README
there for where each one comes from), and on a few written by hand for forms
our guests do not print. Kinds that no real log shows yet are checked against
the kernel's own printk format strings, and those strings are verified
against the kernel source when it is on the machine (kernel-marked tests).
The live reader, harness.console.ConsoleLog, must agree with the parser
however the log arrives, and `python -m harness parse` is run as a command.
"""

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import console_events
from harness.console import ConsoleLog
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
REPO = Path(__file__).parent.parent
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
    # Written by hand from the kernel's printk formats (see README.md here).
    "written-rcu-self-detected-stall.log": [
        ("lockup_injected", 26.100011, 2, 1),
        ("soft_lockup", 31.904211, 2, 2),
        ("rcu_stall", 47.113020, 2, 4),   # no caller id: the CPU from line 5
        ("rcu_stall", 52.006005, None, 8),  # detected by another CPU: not line 9's
        ("lockup_released", 66.100042, 2, 11),
        ("lockup_injected", 70.200007, 3, 12),
        ("rcu_stall", 91.300110, 3, 13),  # line 15 names it, after a line from elsewhere
        ("lockup_released", 100.200031, 3, 17),
    ],
    "written-glued-records.log": [
        ("boot_complete", 1.327466, None, 1),
        ("boot_complete", 1.679482, None, 2),
        ("rcu_stall", 417.700312, 1, 3),  # after "login: "
        ("lockup_injected", 420.113002, 0, 6),  # two records on line 6
        ("hard_lockup", 425.904718, 0, 6),
        ("lockup_released", 434.113901, 0, 8),  # after a shell prompt
    ],
    # The debug flavour of the HPET kernel asked for three defects
    # (canary-debug-report): what the written log below guessed, printed.
    "guest-hpet-debug-2cpu-canary-debug-report.log": [
        ("detector_enabled", 2.08505, 1, 277),
        ("boot_complete", 2.606589, None, 284),  # running /init
        ("boot_complete", 3.278884, None, 289),  # guest agent ready
        # The "CPU: 1" header comes 80 lines on, after the lock chains; [T51]
        # is a task, not a CPU.
        ("lockdep", 3.478353, None, 292),
        ("invalid_context", 3.550892, 1, 389),  # "INFO: lockdep is turned off." after it: no event
        ("invalid_context", 3.627036, 1, 430),
    ],
    "written-debug-kernel-reports.log": [
        # The lockdep report's "CPU:" header comes 14 lines later, too far to
        # be taken; [T60] is a task, not a CPU.
        ("lockdep", 12.401135, None, 3),
        ("invalid_context", 15.730101, 3, 18),  # cpu from the "CPU: 3" header
        ("invalid_context", 18.020011, 0, 24),
        ("kasan", 21.500312, 2, 28),
        ("workqueue_lockup", 52.880412, 2, 32),  # a per-CPU pool
        ("workqueue_lockup", 52.881030, None, 33),  # an unbound pool: cpus=0-3
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
    ("kernel/watchdog.c", "watchdog: ", "Hard watchdog: detector stopped working, %s took over",
     ("buddy",), "detector_handover", None),
    ("lib/test_lockup.c", "test_lockup: ", "Start on CPU%d", (1,), "lockup_injected", 1),
    ("drivers/misc/lkdtm/core.c", "lkdtm: ", "Performing direct entry %s", ("HARDLOCKUP",),
     "lockup_injected", None),
    ("lib/test_lockup.c", "test_lockup: ", "Finish on CPU%d in %lld ns", (1, 8000000000), "lockup_released", 1),
    # --- hung tasks, other lockup detectors
    (None, "", "INFO: task %s:%d blocked in I/O wait for more than %ld seconds.",  # after 6.12
     ("dd", 456, 122), "hung_task", None),
    (None, "", "INFO: task %s:%d can't die for more than %ld seconds.",  # linux-next only
     ("syz-executor.5", 925, 143), "hung_task", None),
    ("kernel/workqueue.c", "",  # one pr_emerg() and its pr_cont()s
     ("BUG: workqueue lockup - pool", " cpus=%*pbl", " node=%d", " flags=0x%x", " nice=%d", " stuck for %us!"),
     ("3", 0, 0, 0, 37), "workqueue_lockup", 3),
    ("kernel/locking/spinlock_debug.c", "", "BUG: spinlock %s on CPU#%d, %s/%d",
     ("lockup suspected", 3, "swapper/3", 0), "spinlock_lockup", 3),  # the message is pre-4.11's
    # --- crashes and warnings
    ("kernel/panic.c", "", "WARNING: CPU: %d PID: %d at %s:%d %pS",  # a corrupted PID
     (2, -1, "kernel/foo.c", 12, "func+0x1/0x2"), "warning", 2),
    (None, "", "WARNING: %s:%d at %pS, CPU#%d: %s/%d",  # after 6.12
     ("kernel/sched/core.c", 8511, "sched_init+0x20/0x410", 2, "swapper/0", 1), "warning", 2),
    (None, "", "WARNING: %s:%d at %pS, CPU#%d: %s/%d",  # with its condition
     ("[ptr == 0 && 1] kernel/sched/core.c", 8511, "sched_init+0x20/0x410", 0, "swapper/0", 1),
     "warning", 0),
    (None, "", "WARNING: at %pS, CPU#%d: %s/%d", ("foo+0x1/0x2", 3, "sh", 60), "warning", 3),
    ("mm/kasan/report.c", "", "BUG: KASAN: %s in %pS", ("slab-out-of-bounds", "foo+0x1b/0x40"), "kasan", None),
    ("mm/kasan/report.c", "", "BUG: KASAN: invalid-access", (), "kasan", None),
    ("kernel/kcsan/report.c", "", "BUG: KCSAN: %s in %ps / %ps",
     ("data-race", "hld_expiry", "hld_anchor"), "kcsan", None),
    ("kernel/kcsan/report.c", "", "BUG: KCSAN: %s in %pS", ("assert: race", "foo+0x1/0x2"),
     "kcsan", None),
    ("arch/x86/kernel/traps.c", "traps: ", "PANIC: double fault, error_code: 0x%lx", (0,), "oops", None),
    # --- a PROVE_LOCKING kernel: lockdep, and wrong-context checks
    ("kernel/locking/lockdep.c", "", "WARNING: possible circular locking dependency detected", (), "lockdep", None),
    ("kernel/locking/lockdep.c", "", "WARNING: %s-safe -> %s-unsafe lock order detected",
     ("HARDIRQ", "HARDIRQ"), "lockdep", None),
    ("kernel/locking/lockdep.c", "", "WARNING: possible recursive locking detected", (), "lockdep", None),
    ("kernel/locking/lockdep.c", "", "WARNING: inconsistent lock state", (), "lockdep", None),
    ("kernel/locking/lockdep.c", "", "WARNING: possible irq lock inversion dependency detected",
     (), "lockdep", None),
    ("kernel/locking/lockdep.c", "", "WARNING: bad unlock balance detected!", (), "lockdep", None),
    ("kernel/locking/lockdep.c", "", "WARNING: held lock freed!", (), "lockdep", None),
    ("kernel/locking/lockdep.c", "", "WARNING: %s/%d still has locks held!", ("kworker/1:2", 87), "lockdep", None),
    ("kernel/locking/lockdep.c", "", "WARNING: lock held when returning to user space!", (), "lockdep", None),
    ("kernel/locking/lockdep.c", "", "WARNING: suspicious RCU usage", (), "lockdep", None),
    ("kernel/locking/lockdep.c", "", "[ BUG: Invalid wait context ]", (), "lockdep", None),
    ("kernel/locking/lockdep.c", "", "BUG: MAX_LOCKDEP_CHAINS too low!", (), "lockdep", None),
    ("kernel/locking/spinlock_debug.c", "", "BUG: spinlock %s on CPU#%d, %s/%d",
     ("bad magic", 1, "swapper/1", 0), "lockdep", 1),
    ("kernel/locking/spinlock_debug.c", "", "BUG: rwlock %s on CPU#%d, %s/%d, %p",
     ("recursion", 0, "sh", 60, "000000004f3c7a21"), "lockdep", 0),
    ("kernel/sched/core.c", "", "BUG: sleeping function called from invalid context at %s:%d",
     ("kernel/locking/mutex.c", 585), "invalid_context", None),
    ("kernel/sched/core.c", "", "BUG: scheduling while atomic: %s/%d/0x%08x", ("sh", 60, 2), "invalid_context", None),
    ("lib/smp_processor_id.c", "", "BUG: using %s%s() in preemptible [%08x] code: %s/%d",
     ("smp_processor_id", "", 0, "sh", 60), "invalid_context", None),
    ("lib/smp_processor_id.c", "", "BUG: using %s%s() in preemptible [%08x] code: %s/%d",
     ("__this_cpu_", "read", 0, "sh", 60), "invalid_context", None),
    ("kernel/locking/lockdep.c", "", "INFO: trying to register non-static key.", (), "lockdep", None),
    ("kernel/workqueue.c", "", "BUG: workqueue leaked atomic, lock or RCU: %s[%d]",
     ("kworker/1:1", 33), "invalid_context", None),
]


def _render(fmt, args):
    """printf the way the kernel would, for the conversions used above; a
    tuple is one message printed by a printk and its pr_cont()s."""
    fmt = "".join(fmt) if isinstance(fmt, tuple) else fmt
    fmt = re.sub(r"%(?:\*pbl|p[xsS]?)", "%s", fmt)
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


@pytest.mark.parametrize("source, fmt", sorted({(f[0], f[2]) for f in KERNEL_FORMATS if f[0]}, key=str))
def test_kernel_format_is_in_source(source, fmt, ksrc):
    # Guards the table above against drifting from what the kernel prints.
    text = (ksrc / source).read_text(errors="replace")
    for piece in fmt if isinstance(fmt, tuple) else (fmt,):
        assert piece in text


def test_panic_title_carries_reason():
    (event,) = parse_lines(["[   40.1] Kernel panic - not syncing: Hard LOCKUP"])
    assert event.title == "Kernel panic: Hard LOCKUP"


def test_titles_of_hung_task_variants_warnings_and_debug_reports():
    lines = [
        "[  1.0] INFO: task dd:456 blocked in I/O wait for more than 122 seconds.",
        "[  2.0] INFO: task syz-executor.5:925 can't die for more than 143 seconds.",
        "[  3.0] WARNING: kernel/sched/core.c:8511 at sched_init+0x20/0x410, CPU#0: swapper/0/1",
        "[  4.0] WARNING: CPU: 1 PID: -1 at kernel/foo.c:12 func+0x1/0x2",
        "[  5.0] WARNING: at foo+0x1/0x2, CPU#3: sh/60",
        "[  6.0] BUG: spinlock lockup suspected on CPU#3, swapper/3/0",
        "[  7.0] BUG: spinlock bad magic on CPU#1, swapper/1/0",
        "[  8.0] traps: PANIC: double fault, error_code: 0x0",
        "[  9.0] WARNING: kworker/1:2/87 still has locks held!",
        "[ 10.0] BUG: using __this_cpu_read() in preemptible [00000000] code: sh/60",
    ]
    assert [(e.kind, e.cpu, e.title) for e in parse_lines(lines)] == [
        ("hung_task", None, "hung task dd:456 in I/O wait (>122s)"),
        ("hung_task", None, "task syz-executor.5:925 can't die (>143s)"),
        ("warning", 0, "WARNING at kernel/sched/core.c:8511"),
        ("warning", 1, "WARNING at kernel/foo.c:12"),
        ("warning", 3, "WARNING at foo+0x1/0x2"),
        ("spinlock_lockup", 3, "spinlock lockup suspected on cpu 3"),
        ("lockdep", 1, "spinlock bad magic on cpu 1"),
        ("oops", None, "PANIC: double fault, error_code 0x0"),
        ("lockdep", None, "lockdep: kworker/1:2/87 still has locks held"),
        ("invalid_context", None, "using __this_cpu_read() in preemptible"),
    ]


def test_lock_and_context_reports_of_real_kernels():
    # Lines as real kernels printed them, quoted in public bug reports:
    # bcachefs issue 694 (6.10: a work function left inside an RCU read-side
    # section), raspberrypi/linux issue 944 (3.18, the older wording, from
    # syslog) and pull request 4800 (5.15: a mutex never initialized).
    lines = [
        "[22218.499424] BUG: workqueue leaked atomic, lock or RCU: kworker/u65:3[4146]",
        "Apr 26 17:17:12 gardeneast kernel: [160403.252871] BUG: workqueue leaked lock or "
        "atomic: kworker/0:2/0xffffffff/4586",
        "[   29.847138] INFO: trying to register non-static key.",
    ]
    assert [(e.kind, e.time, e.title) for e in parse_lines(lines)] == [
        ("invalid_context", 22218.499424, "workqueue leaked atomic, lock or RCU"),
        ("invalid_context", 160403.252871, "workqueue leaked lock or atomic"),
        ("lockdep", 29.847138, "lockdep: trying to register non-static key"),
    ]


def test_lockdep_reports_are_not_generic_warnings():
    # A debug kernel's lock reports say "WARNING:" but are typed apart, and
    # what follows the header does not make events of its own.
    events = parse_file(LOG_DIR / "written-debug-kernel-reports.log")
    assert not [e for e in events if e.kind == "warning"]
    assert events[0].title == "lockdep: possible circular locking dependency"
    assert [e.title for e in events if e.kind == "invalid_context"] == [
        "sleeping function called from invalid context", "using smp_processor_id() in preemptible"]


# --- lines that hold a record after other text, or two records ---------------

def test_text_glued_before_the_timestamp():
    # The example, as a getty prompt leaves it on a serial console.
    line = "login: [  417.7][ C1] rcu: INFO: rcu_preempt self-detected stall on CPU"
    (event,) = parse_lines([line])
    assert (event.kind, event.time, event.cpu, event.line, event.text) == ("rcu_stall", 417.7, 1, 1, line)


def test_two_records_on_one_line_are_both_parsed():
    line = ("[    7.541880][    C0] Kernel panic - not syncing: Hard LOCKUP"
            "[    7.549590][    C1] watchdog: BUG: soft lockup - CPU#1 stuck for 5s! [sh:60]")
    first, second = parse_lines([line])
    # The first record ends where the second begins: its reason is only its own.
    assert (first.kind, first.time, first.cpu, first.title) == ("panic", 7.54188, 0, "Kernel panic: Hard LOCKUP")
    assert (second.kind, second.time, second.cpu) == ("soft_lockup", 7.54959, 1)
    assert first.line == second.line == 1 and first.text == second.text == line


def test_a_line_of_three_records_and_text_between():
    line = ("[ 1.0] lockup_inject: cpu 1: irqoff lockup for 8000 ms"
            "junk[ 2.0] watchdog: Watchdog detected hard LOCKUP on cpu 1"
            "[ 3.0][ T9] lockup_inject: cpu 1: released after 8000 ms")
    assert [(e.kind, e.time, e.cpu) for e in parse_lines([line])] == [
        ("lockup_injected", 1.0, 1), ("hard_lockup", 2.0, 1), ("lockup_released", 3.0, 1)]


# --- an RCU stall's CPU from the line that names it ---------------------------

SELF_STALL = "[ 47.1] rcu: INFO: rcu_preempt self-detected stall on CPU"
STALL_CPU = "[ 47.1] rcu: \t2-....: (5251 ticks this GP) idle=c364/1/0x4000000000000000 softirq=1203/1203 fqs=2586"


def test_self_detected_rcu_stall_takes_its_cpu_from_the_next_line():
    (event,) = parse_lines([SELF_STALL, STALL_CPU])
    assert (event.kind, event.cpu, event.line) == ("rcu_stall", 2, 1)
    # Older kernels: "GPs behind", and no flags before the colon.
    (event,) = parse_lines([SELF_STALL, "[ 47.1] \t5: (2 GPs behind) idle=140/0/0 softirq=1/1 fqs=0"])
    assert event.cpu == 5


def test_rcu_stall_cpu_line_is_taken_only_for_a_self_detected_stall_nearby():
    other = "[ 52.0] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:"
    (event,) = parse_lines([other, STALL_CPU])
    assert event.cpu is None  # a stall seen by another CPU: the CPUs listed are many
    far = [SELF_STALL] + ["[ 47.1] virtio_net virtio0 eth0: TX timeout"] * 4 + [STALL_CPU]
    (event,) = parse_lines(far)
    assert event.cpu is None  # too far to belong to it
    assert parse_lines([STALL_CPU]) == []  # and alone, it is no event


# --- the live console reads the log in pieces ---------------------------------

def _pieces_by_line(data, rng):
    return data.splitlines(keepends=True)


def _pieces_by_bytes(data, rng):
    at, pieces = 0, []
    while at < len(data):
        step = rng.choice((1, 7, 60, 200, 1500))
        pieces.append(data[at:at + step])
        at += step
    return pieces


@pytest.mark.parametrize("pieces", [_pieces_by_line, _pieces_by_bytes], ids=["lines", "bytes"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_console_log_read_in_pieces_gives_the_same_events(name, pieces, tmp_path):
    # A later line can complete an earlier event (an oops's or RCU stall's
    # CPU), and the guest may not have written it yet at one read.
    data = (LOG_DIR / name).read_bytes()
    log = tmp_path / "console.log"
    log.write_bytes(b"")
    console = ConsoleLog(log)
    for piece in pieces(data, random.Random(name)):
        with open(log, "ab") as f:
            f.write(piece)
        console.refresh()
    assert console.events() == parse_file(LOG_DIR / name)


def test_console_log_fills_in_a_stall_cpu_written_later(tmp_path):
    log = tmp_path / "console.log"
    log.write_text(SELF_STALL + "\n")
    console = ConsoleLog(log)
    assert [e.cpu for e in console.events("rcu_stall")] == [None]
    with open(log, "a") as f:
        f.write(STALL_CPU + "\n")
    assert [e.cpu for e in console.events("rcu_stall")] == [2]


# --- the CLI ------------------------------------------------------------------

def test_parse_cli_ends_quietly_when_the_reader_has_gone():
    # `python -m harness parse LOG | head`: here the pipe is closed before the
    # first write, so every write fails as it would after head exits.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "harness", "parse",
                               str(LOG_DIR / "guest-buddy-8cpu-lockups.log")],
                              stdout=write_end, stderr=subprocess.PIPE, cwd=REPO, timeout=60)
    finally:
        os.close(write_end)
    assert proc.stderr.decode() == ""
    assert proc.returncode == 141  # 128 + SIGPIPE, as cat ends


def test_parse_cli_prints_every_event():
    proc = subprocess.run([sys.executable, "-m", "harness", "parse", "--json",
                           str(LOG_DIR / "written-glued-records.log")],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0 and proc.stderr == ""
    assert json.loads(proc.stdout) == [e.to_dict() for e in parse_file(LOG_DIR / "written-glued-records.log")]


# --- our own guest-side messages (formats defined by this project) -----------

def test_project_messages():
    lines = [
        "[    1.500000] hpet_hld: enabled on channel 2, handling CPU 0, monitoring CPUs 0-3",
        "[    1.600000] hpet_hld: disabled: interrupt remapping unavailable",
        "[    1.700000] hpet_hld: not used: no free HPET channel",
        "[    1.800000][   T47] hpet_hld: no NMI from channel 2 on CPU 1 for 2 s: restarting it",
        "[    2.000000][    T1] harness: agent ready",
        "[   10.000000] lockup_inject: cpu 1: irqoff lockup for 8000 ms",
        "[   18.001000] lockup_inject: cpu 1: released after 8001 ms",
    ]
    got = [(e.kind, e.cpu, e.title) for e in parse_lines(lines)]
    assert got == [
        ("detector_enabled", 0, "HPET hardlockup detector enabled: on channel 2, handling CPU 0, monitoring CPUs 0-3"),
        ("detector_disabled", None, "HPET hardlockup detector disabled: interrupt remapping unavailable"),
        ("detector_disabled", None, "HPET hardlockup detector not used: no free HPET channel"),
        ("detector_restarted", 1, "HPET channel 2 silent on cpu 1 for 2 s: restarted"),
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


def test_every_rule_kind_is_an_event_kind_and_compares_as_its_name():
    assert set(console_events.KINDS) == set(console_events.EventKind)
    e = console_events.Event("hard_lockup", 1.0, 1, "hard LOCKUP on cpu 1", 1, "x")
    assert e.kind is console_events.EventKind.HARD_LOCKUP and e.kind == "hard_lockup"
    assert json.loads(json.dumps(e.to_dict()))["kind"] == "hard_lockup"
    with pytest.raises(ValueError):
        console_events.Event("hard_lockupp", 1.0, 1, "", 1, "")
