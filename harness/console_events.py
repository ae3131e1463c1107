"""Find the events we care about in a kernel serial console log.

One job: turn console text into a list of Event records (lockups, panics,
oopses, lock-debugging reports, DMAR faults, detector state, our own
injection markers). Each printk record is matched against one table of
regexes, first match wins. A record is normally a line; a line that holds
other text before a printk timestamp, or two records run together, is split
at the timestamps (_records). Some events take their CPU from a later line:
an oops from the "CPU: N PID:" header of its backtrace, a self-detected RCU
stall from the line naming the stalled CPU (parse_lines). The message formats
come from the kernel sources (6.12 unless noted), so that a renamed printk
shows up here as a failing test rather than a silently missed lockup.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Iterable


class EventKind(StrEnum):
    """What an event is. A str: `event.kind == "hard_lockup"`, JSON and
    f-strings see the plain name."""
    HARD_LOCKUP = "hard_lockup"
    SOFT_LOCKUP = "soft_lockup"
    RCU_STALL = "rcu_stall"
    HUNG_TASK = "hung_task"
    WORKQUEUE_LOCKUP = "workqueue_lockup"
    SPINLOCK_LOCKUP = "spinlock_lockup"
    PANIC = "panic"
    LOCKDEP = "lockdep"
    INVALID_CONTEXT = "invalid_context"
    KASAN = "kasan"
    KCSAN = "kcsan"
    OOPS = "oops"
    GPF = "gpf"
    BUG = "bug"
    WARNING = "warning"
    UNKNOWN_NMI = "unknown_nmi"
    NMI_SLOW = "nmi_slow"
    DMAR_FAULT = "dmar_fault"
    BOOT_COMPLETE = "boot_complete"
    DETECTOR_ENABLED = "detector_enabled"
    DETECTOR_DISABLED = "detector_disabled"
    DETECTOR_RESTARTED = "detector_restarted"
    DETECTOR_HANDOVER = "detector_handover"
    LOCKUP_INJECTED = "lockup_injected"
    LOCKUP_RELEASED = "lockup_released"


@dataclass(frozen=True)
class Event:
    kind: EventKind     # a plain string (from JSON) becomes its EventKind
    time: float | None  # seconds from the "[   12.345678]" prefix
    cpu: int | None     # the CPU the event is about
    title: str
    line: int           # 1-based
    text: str           # the raw line, without its newline

    def __post_init__(self):
        object.__setattr__(self, "kind", EventKind(self.kind))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Where an event's CPU comes from (third column of the table): the name of a
# regex group, CALLER for the "[    C<n>]" caller id of the printing CPU (for
# messages that are printed by the CPU they are about), or None when the
# printing CPU would be the wrong answer.
CALLER = "caller"

# Each rule: (kind, message regex, where the CPU comes from, title).
# A regex is matched at the start of the message, i.e. after the timestamp and
# caller prefixes are taken off, which is what keeps the "---[ end Kernel
# panic ..." trailer and quoted text inside other messages from matching.
# A title is a str.format template over the regex's named groups.
_RULES = [
    # kernel/watchdog.c; newer kernels add "CPU%u: " (the detecting CPU),
    # pre-5.x perf detector prints "NMI watchdog: ". cpu = the locked-up CPU.
    ("hard_lockup",
     r"(?:(?:NMI )?watchdog: )?(?:CPU\d+: )?Watchdog detected hard LOCKUP on cpu (?P<cpu>\d+)",
     "cpu", "hard LOCKUP on cpu {cpu}"),
    ("soft_lockup",
     r"(?:(?:NMI )?watchdog: )?BUG: soft lockup - CPU#(?P<cpu>\d+) stuck for (?P<secs>\d+)s!(?P<task>.*)",
     "cpu", "soft lockup on cpu {cpu}, stuck for {secs}s{task}"),
    # kernel/rcu/tree_stall.h, tree_exp.h; "rcu: " prefix since 5.x. A
    # self-detected stall is printed by the stalled CPU, which names itself on
    # the next line ("rcu: \t1-....: (5249 ticks this GP) ..."): parse_lines
    # takes the CPU from there, so it is known without a "[ C1]" caller id.
    ("rcu_stall",
     r"(?:rcu: )?INFO: (?P<flavor>\S+) self-detected stall on CPU",
     CALLER, "RCU stall ({flavor}, self-detected)"),
    ("rcu_stall",
     r"(?:rcu: )?INFO: (?P<flavor>\S+) detected expedited stalls on CPUs/tasks: \{ ?(?P<cpu>\d+)?",
     "cpu", "RCU expedited stall ({flavor})"),
    ("rcu_stall",
     r"(?:rcu: )?INFO: (?P<flavor>\S+) detected (?:expedited )?stalls?\b",
     None, "RCU stall ({flavor})"),  # the stalled CPUs follow on later lines
    # kernel/hung_task.c. Upstream after 6.12, a task waiting for I/O is
    # "blocked in I/O wait for more than" (commit 73d40c42f6aa, "hung_task:
    # explicitly report I/O wait state in log output", 2026).
    ("hung_task",
     r"INFO: task (?P<task>.+?):(?P<pid>\d+) blocked(?P<io> in I/O wait)? for more than (?P<secs>\d+) seconds",
     None, "hung task {task}:{pid}{io} (>{secs}s)"),
    # Not in mainline: linux-next carried Tetsuo Handa's "kernel/hung_task.c:
    # Monitor killed tasks." (2019) for syzbot, a killed task that does not
    # exit: pr_err("INFO: task %s:%d can't die for more than %ld seconds.\n").
    ("hung_task",
     r"INFO: task (?P<task>.+?):(?P<pid>\d+) can't die for more than (?P<secs>\d+) seconds",
     None, "task {task}:{pid} can't die (>{secs}s)"),
    # kernel/workqueue.c: "BUG: workqueue lockup - pool" then pr_cont of the
    # pool (" cpus=%*pbl node=%d flags=0x%x nice=%d") and " stuck for %us!".
    # A per-CPU pool names one CPU; an unbound pool a list ("0-3"): no CPU.
    ("workqueue_lockup",
     r"BUG: workqueue lockup - pool cpus=(?P<cpus>(?P<cpu>\d+)(?![\d,-])|\S+)",
     "cpu", "workqueue lockup, pool cpus={cpus}"),
    # kernel/locking/spinlock_debug.c spin_dump(): "BUG: spinlock %s on
    # CPU#%d, %s/%d" (6.12). Its "lockup suspected" message (the CPU spinning
    # on the lock) was removed in 4.11 (commit bc88c10d7e69, "locking/spinlock/
    # debug: Remove spinlock lockup detection code"); older kernels print it.
    ("spinlock_lockup",
     r"BUG: spinlock lockup(?: suspected)? on CPU#(?P<cpu>\d+)",
     "cpu", "spinlock lockup suspected on cpu {cpu}"),
    ("panic",
     r"Kernel panic - not syncing: (?P<reason>.*)",
     CALLER, "Kernel panic: {reason}"),
    # Lock and context debugging of a CONFIG_PROVE_LOCKING kernel, each report
    # a header line followed by details and a backtrace. kind "lockdep":
    # kernel/locking/lockdep.c (its "BUG: MAX_... too low!" turns lockdep off)
    # and the DEBUG_SPINLOCK checks PROVE_LOCKING selects (spinlock_debug.c).
    ("lockdep",
     r"WARNING: (?P<what>possible circular locking dependency|possible recursive locking"
     r"|possible irq lock inversion dependency|\S+-safe -> \S+-unsafe lock order"
     r"|inconsistent lock state|bad unlock balance|bad contention|held lock freed"
     r"|lock held when returning to user space|Nested lock was not taken"
     r"|suspicious RCU usage|chain_key collision|\S+ still has locks held)",
     CALLER, "lockdep: {what}"),
    ("lockdep",
     r"\[ BUG: (?P<what>Invalid wait context) \]",
     CALLER, "lockdep: {what}"),
    ("lockdep",
     r"BUG: (?P<what>MAX_\w+ too low|key \S+ has not been registered|looking up invalid subclass)",
     CALLER, "lockdep: {what}"),
    # register_lock_class(): a lock with no static key (not initialized, or
    # not annotated); lockdep turns itself off.
    ("lockdep",
     r"INFO: (?P<what>trying to register non-static key)",
     CALLER, "lockdep: {what}"),
    ("lockdep",
     r"BUG: (?P<lock>spinlock|rwlock) (?P<what>.+?) on CPU#(?P<cpu>\d+)",
     "cpu", "{lock} {what} on cpu {cpu}"),
    # kind "invalid_context": sleeping or scheduling where the kernel must not
    # (kernel/sched/core.c; always on, or with DEBUG_ATOMIC_SLEEP) and a
    # per-CPU access from preemptible code (lib/smp_processor_id.c,
    # DEBUG_PREEMPT). The printing CPU is the one in the wrong context.
    ("invalid_context",
     r"BUG: (?P<what>sleeping function called from invalid context|scheduling while atomic"
     r"|scheduling in a non-blocking section|assuming atomic context|assuming non migratable context"
     r"|using \S+\(\) in preemptible)",
     CALLER, "{what}"),
    # kernel/workqueue.c process_one_work(): a work function that returned
    # atomic, holding a lock or inside rcu_read_lock(): "BUG: workqueue
    # leaked atomic, lock or RCU: %s[%d]" (before 6.3: "leaked lock or
    # atomic: %s/0x%08x/%d"). Printed by the worker, on its CPU.
    ("invalid_context",
     r"BUG: workqueue leaked (?P<what>[^:]+): ",
     CALLER, "workqueue leaked {what}"),
    # mm/kasan/report.c: "BUG: KASAN: %s in %pS" (and "invalid-access").
    ("kasan",
     r"BUG: KASAN: (?P<what>.*)",
     CALLER, "KASAN: {what}"),
    # kernel/kcsan/report.c print_report(): "BUG: KCSAN: %s in %ps / %ps"
    # (both racing accesses seen) or "... in %pS" (one), %s "data-race" or
    # "assert: race".
    ("kcsan",
     r"BUG: KCSAN: (?P<what>data-race|assert: race) in (?P<where>.*)",
     CALLER, "KCSAN {what} in {where}"),
    # arch/x86/kernel/traps.c exc_double_fault(), before die("double fault"):
    # the oops that follows is typed by the Oops rule below. pr_fmt is
    # KBUILD_MODNAME ": ", i.e. "traps: " (older kernels print no prefix).
    ("oops",
     r"(?:traps: )?PANIC: double fault, error_code: (?P<code>\S+)",
     CALLER, "PANIC: double fault, error_code {code}"),
    # arch/x86/mm/fault.c (and the pre-4.19 wording).
    ("oops",
     r"BUG: (?:kernel NULL pointer dereference, address:|unable to handle kernel NULL pointer dereference at) (?P<addr>\S+)",
     CALLER, "BUG: kernel NULL pointer dereference at {addr}"),
    ("oops",
     r"BUG: unable to handle (?:page fault for address:?|kernel paging request at) (?P<addr>\S+)",
     CALLER, "BUG: unable to handle page fault at {addr}"),
    # Since 6.x the GPF is printed inside the "Oops: " header, so it must come
    # before the generic Oops rule.
    ("gpf",
     r"(?:Oops: )?(?:segment-related )?general protection fault",
     CALLER, "general protection fault"),
    ("bug",
     r"kernel BUG at (?P<where>[^!]*)!",
     CALLER, "kernel BUG at {where}"),
    ("oops",
     r"Oops: (?:[^\[]*?: )?(?P<code>[0-9a-f]{4}) \[#(?P<n>\d+)\]",
     CALLER, "Oops {code} [#{n}]"),
    # kernel/panic.c __warn(). A corrupted line can carry a negative PID.
    ("warning",
     r"WARNING: CPU: (?P<cpu>\d+) PID: -?\d+ at (?P<where>\S+)",
     "cpu", "WARNING at {where}"),
    # __warn() upstream after 6.12: "WARNING: %s:%d at %pS, CPU#%d: %s/%d", or
    # "WARNING: at %pS, CPU#%d: %s/%d" without a file; the file may follow a
    # "[condition] " (Ingo Molnar, "bugs/core: Reorganize fields in the first
    # line of WARNING output, add ->comm[] output", 2025-03-27,
    # <20250327102953.813608-15-mingo@kernel.org>).
    ("warning",
     r"WARNING: (?:\[[^\]]*\] )?(?:(?P<where>\S+:\d+) at \S+|at (?P<func>\S+)), CPU#(?P<cpu>\d+): ",
     "cpu", "WARNING at {where}{func}"),
    # arch/x86/kernel/nmi.c; the reason is printed in hex.
    ("unknown_nmi",
     r"Uhhuh\. NMI received for unknown reason (?P<reason>[0-9a-fA-F]+) on CPU (?P<cpu>\d+)",
     "cpu", "unknown NMI, reason {reason}"),
    ("unknown_nmi",
     r"Dazed and confused, but trying to continue",
     CALLER, "NMI: dazed and confused"),
    # arch/x86/kernel/nmi.c, rate-limited. Not a false positive by itself: a
    # handler that prints a backtrace is slow, and under TCG a vCPU the host
    # preempted mid-handler looks slow too. Counted, not judged.
    ("nmi_slow",
     r"INFO: NMI handler \((?P<handler>[^)]+)\) took too long to run: (?P<ms>[\d.]+) msecs",
     CALLER, "NMI handler {handler} took {ms} ms"),
    # drivers/iommu/intel/dmar.c (pr_fmt "DMAR: "; 3.x had "dmar:" / "DMAR:[").
    ("dmar_fault",
     r"(?:DMAR|dmar): ?DRHD: handling fault status reg (?P<reg>[0-9a-fA-F]+)",
     None, "DMAR fault status reg {reg}"),
    ("dmar_fault",
     r"(?:DMAR|dmar): ?\[(?P<type>[^\]]+)\] Request device \[(?P<dev>[^\]]+)\] fault (?:index|addr) \S+ \[fault reason (?P<reason>[^\]]+)\]",
     None, "DMAR {type} fault from {dev}, reason {reason}"),
    # drivers/iommu/amd/iommu.c; dev_err() puts "driver device: " in front.
    ("dmar_fault",
     r"(?:\S+ \S+: )?AMD-Vi: Event logged \[(?P<event>[A-Z_]+)[ \]]",
     None, "AMD-Vi {event}"),
    # Our guest /init writes the first to /dev/kmsg; the second is the fallback.
    ("boot_complete", r"harness: agent ready", None, "guest agent ready"),
    ("boot_complete", r"Run (?P<init>\S+) as init process", None, "running {init}"),
    # kernel/watchdog_perf.c (pr_fmt "NMI watchdog: "), kernel/watchdog.c
    # (pr_fmt "watchdog: "). The buddy detector prints nothing in 6.12.
    ("detector_enabled",
     r"NMI watchdog: [Ee]nabled\b",
     None, "perf NMI watchdog enabled"),
    ("detector_disabled",
     r"NMI watchdog: (?:Perf NMI watchdog permanently disabled|[Dd]isabled\b)",
     None, "perf NMI watchdog disabled"),
    ("detector_disabled",
     r"watchdog: Hard watchdog permanently disabled",
     None, "hardlockup detector permanently disabled"),
    # kernel/watchdog.c of the series (patch 15): the arch detector was lost
    # and the one it falls back to (buddy or perf) took over.
    ("detector_handover",
     r"watchdog: Hard watchdog: detector stopped working, (?P<to>\w+) took over",
     None, "hardlockup detector lost: {to} took over"),
    # Our HPET detector: "hpet_hld: enabled on channel 2, handling CPU 0, ...".
    ("detector_enabled",
     r"hpet_hld: enabled\b,? ?(?P<detail>(?:.*?handling CPU (?P<cpu>\d+))?.*)",
     "cpu", "HPET hardlockup detector enabled: {detail}"),
    ("detector_disabled",
     r"hpet_hld: (?P<how>disabled|not used)\b:? ?(?P<reason>.*)",
     None, "HPET hardlockup detector {how}: {reason}"),
    # Its watch, once per watchdog_thresh, about the handling CPU (cpu).
    ("detector_restarted",
     r"hpet_hld: no NMI from channel (?P<ch>\d+) on CPU (?P<cpu>\d+) for (?P<s>\d+) s: "
     r"restarting it",
     "cpu", "HPET channel {ch} silent on cpu {cpu} for {s} s: restarted"),
    # Our guest/modules/lockup_inject module.
    ("lockup_injected",
     r"lockup_inject: cpu (?P<cpu>\d+): (?P<mode>\S+) lockup for (?P<ms>\d+) ms",
     "cpu", "{mode} lockup injected on cpu {cpu} for {ms} ms"),
    ("lockup_released",
     r"lockup_inject: cpu (?P<cpu>\d+): released after (?P<ms>\d+) ms",
     "cpu", "lockup released on cpu {cpu} after {ms} ms"),
    # lib/test_lockup.c prints one Start/Finish pair per CPU it locks up.
    ("lockup_injected",
     r"test_lockup: Start on CPU(?P<cpu>\d+)",
     "cpu", "test_lockup started on cpu {cpu}"),
    ("lockup_released",
     r"test_lockup: Finish on CPU(?P<cpu>\d+) in (?P<ns>\d+) ns",
     "cpu", "test_lockup finished on cpu {cpu} after {ns} ns"),
    # LKDTM names the crash type, not the CPU: the harness pins the writer.
    ("lockup_injected",
     r"lkdtm: Performing direct entry (?P<type>\S+)",
     None, "LKDTM {type} triggered"),
]

# EventKind(kind): a rule of a kind that is not an EventKind fails at import.
RULES = [(EventKind(kind), re.compile(rx), cpu_group, title)
         for kind, rx, cpu_group, title in _RULES]
KINDS = tuple(dict.fromkeys(kind for kind, *_ in RULES))

# What comes before the message. All parts optional, in this order:
# a syslog/journal "Jun 21 10:00:00 host kernel: " (or ISO-dated, or the bare
# "kernel:" of a syslog wall message), a "<4>" level as in dmesg -r,
# "[   12.345678]" or a dmesg -T "[Thu Oct 22 08:54:51 2020]",
# and the CONFIG_PRINTK_CALLER id "[    C1]" (CPU context) or "[  T123]" (task).
_PREFIX = re.compile(r"""
    (?:(?:(?:[A-Z][a-z]{2}\ +\d{1,2}\ [\d:]{8}|\d{4}-\d\d-\d\dT\S+)\ \S+\ )?kernel:\ *)?
    (?:<\d+>)?
    (?:\[\ *(?P<time>\d+\.\d+)\]|\[(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)\ [^\]]*\])?
    (?:\[\ *(?P<ctx>[CT])(?P<id>\d+)\])?
    \s*
""", re.X)
# A printk timestamp inside a line, where another record starts: text of
# another writer glued before it ("login: [  417.7][ C1] rcu: ..."), or two
# records run together when the first lost its newline.
_EMBEDDED_TIME = re.compile(r"\[\ *\d+\.\d+\]")
# Terminal escapes and carriage returns that a serial console picks up.
_JUNK = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\r")
# dump_stack()'s header, printed just after an oops or panic line: the
# oops messages themselves do not name the CPU.
_CPU_HEADER = re.compile(r"CPU: (?P<cpu>\d+) (?:UID: \d+ )?PID: ")
_CPU_FROM_HEADER = {"oops", "gpf", "bug", "panic", "kasan", "lockdep", "invalid_context"}
_HEADER_WINDOW = 12  # lines; the oops header comes within a few lines
# kernel/rcu/tree_stall.h print_cpu_stall_info(), right after a self-detected
# stall: pr_err("\t%d-%c%c%c%c: (%lu %s) idle=...", cpu, ...) with "ticks
# this GP" or "GPs behind"; 3.x kernels print no flags ("\t%d: (%lu %s) idle=").
_RCU_STALL_CPU = re.compile(r"(?:rcu: )?\s*(?P<cpu>\d+)(?:-\S{4})?: \(\d+ (?:ticks this GP|GPs behind)\)")
_RCU_CPU_WINDOW = 4  # lines; the CPU's line comes next unless another CPU cuts in
# The longest a later line can change an earlier event (console.py re-parses this much).
LOOKAHEAD_LINES = max(_HEADER_WINDOW, _RCU_CPU_WINDOW)


def _records(line: str) -> list[tuple[float | None, int | None, str]]:
    """Split a console line into its printk records: (timestamp, CPU from a
    "[ C<n>]" caller id, message) each. Usually one; more when the line holds
    an embedded printk timestamp (see _EMBEDDED_TIME)."""
    clean = _JUNK.sub("", line)
    records = []
    m = _PREFIX.match(clean)
    while True:
        time = float(m["time"]) if m["time"] else None
        ctx_cpu = int(m["id"]) if m["ctx"] == "C" else None
        nxt = _EMBEDDED_TIME.search(clean, m.end())
        records.append((time, ctx_cpu, clean[m.end():nxt.start() if nxt else len(clean)]))
        if not nxt:
            return records
        m = _PREFIX.match(clean, nxt.start())


def _classify(message: str):
    for kind, regex, cpu_group, title in RULES:
        m = regex.match(message)
        if m:
            groups = {k: (v if v is not None else "") for k, v in m.groupdict().items()}
            cpu = m[cpu_group] if cpu_group not in (None, CALLER) else None
            # strip(): trailing blanks of the last group (a panic reason, ...)
            return kind, cpu_group, (int(cpu) if cpu else None), title.format(**groups).strip()
    return None


def parse_lines(lines: Iterable[str]) -> list[Event]:
    events: list[Event] = []
    waiting: list[int] = []  # indexes of crash events still missing a CPU
    rcu_self: int | None = None  # index of a self-detected RCU stall awaiting its CPU line
    for number, raw in enumerate(lines, start=1):
        raw = raw.rstrip("\r\n")
        for time, ctx_cpu, message in _records(raw):
            if not message:
                continue
            header = _CPU_HEADER.match(message)
            if header:
                for i in waiting:
                    if number - events[i].line <= _HEADER_WINDOW:
                        events[i] = dataclasses.replace(events[i], cpu=int(header["cpu"]))
                waiting = []
                continue
            if rcu_self is not None:
                named = _RCU_STALL_CPU.match(message)
                if named and number - events[rcu_self].line <= _RCU_CPU_WINDOW:
                    events[rcu_self] = dataclasses.replace(events[rcu_self], cpu=int(named["cpu"]))
                    rcu_self = None
                    continue
            found = _classify(message)
            if not found:
                continue
            kind, cpu_from, cpu, title = found
            if cpu_from == CALLER:
                cpu = ctx_cpu
            events.append(Event(kind, time, cpu, title, number, raw))
            if cpu is None and kind in _CPU_FROM_HEADER:
                waiting.append(len(events) - 1)
            if kind == "rcu_stall":
                rcu_self = len(events) - 1 if "self-detected" in title else None
    return events


def parse_text(text: str) -> list[Event]:
    # Split on "\n" only: str.splitlines() also splits on \r, \x0b, \x1c...,
    # which would make line numbers disagree with editors and grep -n.
    return parse_lines(text.split("\n"))


def parse_file(path) -> list[Event]:
    return parse_text(Path(path).read_bytes().decode("utf-8", errors="replace"))


def describe(events) -> str:
    """The first five events, one phrase each, for a verdict's reason."""
    return "; ".join(f"line {e.line}: {e.title}" for e in events[:5])


def summarize(events) -> dict:
    """Count events per kind; every kind is present, with 0 if not seen."""
    counts = dict.fromkeys(KINDS, 0)
    for event in events:
        counts[event.kind] = counts.get(event.kind, 0) + 1
    return counts


def format_events(events, as_json: bool) -> str:
    if as_json:
        return json.dumps([e.to_dict() for e in events], indent=2)
    rows = []
    for e in events:
        time = f"{e.time:12.6f}" if e.time is not None else f"{'-':>12}"
        cpu = str(e.cpu) if e.cpu is not None else "-"
        rows.append(f"{time}  {e.kind:<17}  {cpu:>3}  {e.title}")
    return "\n".join(rows)
