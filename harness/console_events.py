"""Find the events we care about in a kernel serial console log.

One job: turn console text into a list of Event records (lockups, panics,
oopses, DMAR faults, detector state, our own injection markers). Each line is
matched against one table of regexes, first match wins. The message formats
come from the kernel sources (6.12 unless noted), so that a renamed printk
shows up here as a failing test rather than a silently missed lockup.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable


@dataclass(frozen=True)
class Event:
    kind: str
    time: float | None  # seconds from the "[   12.345678]" prefix
    cpu: int | None     # the CPU the event is about
    title: str
    line: int           # 1-based
    text: str           # the raw line, without its newline

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
    # kernel/rcu/tree_stall.h, tree_exp.h; "rcu: " prefix since 5.x.
    ("rcu_stall",
     r"(?:rcu: )?INFO: (?P<flavor>\S+) self-detected stall on CPU",
     CALLER, "RCU stall ({flavor}, self-detected)"),
    ("rcu_stall",
     r"(?:rcu: )?INFO: (?P<flavor>\S+) detected expedited stalls on CPUs/tasks: \{ ?(?P<cpu>\d+)?",
     "cpu", "RCU expedited stall ({flavor})"),
    ("rcu_stall",
     r"(?:rcu: )?INFO: (?P<flavor>\S+) detected (?:expedited )?stalls?\b",
     None, "RCU stall ({flavor})"),  # the stalled CPUs follow on later lines
    ("hung_task",
     r"INFO: task (?P<task>.+?):(?P<pid>\d+) blocked for more than (?P<secs>\d+) seconds",
     None, "hung task {task}:{pid} (>{secs}s)"),
    ("panic",
     r"Kernel panic - not syncing: (?P<reason>.*)",
     CALLER, "Kernel panic: {reason}"),
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
    ("warning",
     r"WARNING: CPU: (?P<cpu>\d+) PID: \d+ at (?P<where>\S+)",
     "cpu", "WARNING at {where}"),
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
    # Our HPET detector: "hpet_hld: enabled on channel 2, handling CPU 0, ...".
    ("detector_enabled",
     r"hpet_hld: enabled\b,? ?(?P<detail>(?:.*?handling CPU (?P<cpu>\d+))?.*)",
     "cpu", "HPET hardlockup detector enabled: {detail}"),
    ("detector_disabled",
     r"hpet_hld: (?P<how>disabled|not used)\b:? ?(?P<reason>.*)",
     None, "HPET hardlockup detector {how}: {reason}"),
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

RULES = [(kind, re.compile(rx), cpu_group, title) for kind, rx, cpu_group, title in _RULES]
KINDS = tuple(dict.fromkeys(kind for kind, *_ in _RULES))

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
# Terminal escapes and carriage returns that a serial console picks up.
_JUNK = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\r")
# dump_stack()'s header, printed just after an oops or panic line: the
# oops messages themselves do not name the CPU.
_CPU_HEADER = re.compile(r"CPU: (?P<cpu>\d+) (?:UID: \d+ )?PID: ")
_CPU_FROM_HEADER = {"oops", "gpf", "bug", "panic"}
_HEADER_WINDOW = 12  # lines; the oops header comes within a few lines


def _split(line: str) -> tuple[float | None, int | None, str]:
    """Return (timestamp, CPU from a "[ C<n>]" caller id, message)."""
    clean = _JUNK.sub("", line)
    m = _PREFIX.match(clean)
    time = float(m["time"]) if m["time"] else None
    ctx_cpu = int(m["id"]) if m["ctx"] == "C" else None
    return time, ctx_cpu, clean[m.end():]


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
    for number, raw in enumerate(lines, start=1):
        raw = raw.rstrip("\r\n")
        time, ctx_cpu, message = _split(raw)
        header = _CPU_HEADER.match(message)
        if header:
            for i in waiting:
                if number - events[i].line <= _HEADER_WINDOW:
                    events[i] = dataclasses.replace(events[i], cpu=int(header["cpu"]))
            waiting = []
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
    return events


def parse_text(text: str) -> list[Event]:
    # Split on "\n" only: str.splitlines() also splits on \r, \x0b, \x1c...,
    # which would make line numbers disagree with editors and grep -n.
    return parse_lines(text.split("\n"))


def parse_file(path) -> list[Event]:
    return parse_text(Path(path).read_bytes().decode("utf-8", errors="replace"))


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
