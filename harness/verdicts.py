"""Verdicts of the contract scenarios, as pure functions of what a scenario
recorded: the module's record of what it injected, and the console's
events. No guest and no I/O here, so a captured log is a regression test
(tests/test_verdicts.py).
"""
import re
from dataclasses import dataclass

from harness import expectations, irte
from harness.console_events import Event, describe, parse_text
from harness.inject_log import Lockup, NmiSent

# A report's timestamp is taken in the NMI that detected the lockup, while
# the CPU was still locked; this only absorbs clock granularity.
ATTRIBUTION_SLACK_S = 0.01


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str
    measurements: dict


def attribute(sections: list[Lockup], reports: list[Event]):
    """Map each report to the section it was made in (same CPU, during it).
    Returns ({section seq: first report}, [reports made outside any])."""
    found: dict[int, Event] = {}
    stray: list[Event] = []
    for r in reports:
        home = next((s for s in sections if s.cpu == r.cpu and r.time is not None
                     and s.start - ATTRIBUTION_SLACK_S <= r.time
                     <= s.end + ATTRIBUTION_SLACK_S), None)
        if home is None:
            stray.append(r)
        else:
            found.setdefault(home.seq, r)
    return found, stray


def sweep(sections: list[Lockup], reports: list[Event], bad: list[Event],
          detector: str, thresh: int) -> Verdict:
    """Interrupts-off sections around watchdog_thresh: none shorter than the
    detector's floor may be reported, and no report may fall outside every
    section. The boundary each detector showed is measured either way."""
    floor = expectations.report_floor(detector)
    found, stray = attribute(sections, reports)
    table: dict[str, dict] = {}
    for s in sections:
        row = table.setdefault(f"{s.ms / (1000 * thresh):.2f}",
                               {"sections": 0, "reported": 0, "cpus": set()})
        row["sections"] += 1
        row["reported"] += s.seq in found
        row["cpus"].add(s.cpu)
    for row in table.values():
        row["cpus"] = sorted(row["cpus"])
    reported = [s for s in sections if s.seq in found]
    unreported = [s for s in sections if s.seq not in found]
    m = {"thresh": thresh, "floor_x_thresh": floor, "sections": len(sections),
         "by_length": dict(sorted(table.items(), key=lambda kv: float(kv[0]))),
         "shortest_reported_x_thresh":
             round(min(s.seconds for s in reported) / thresh, 3) if reported else None,
         "longest_unreported_x_thresh":
             round(max(s.seconds for s in unreported) / thresh, 3) if unreported else None,
         "latency_s": {str(s.seq): round(found[s.seq].time - s.start, 3) for s in reported}}
    if not sections:
        return Verdict(False, "no section was injected", m)
    if bad:
        return Verdict(False, "unexpected: " + describe(bad), m)
    if stray:
        return Verdict(False, "hard lockup reported outside every injected section: "
                       + describe(stray), m)
    early = [s for s in reported if s.seconds < floor * thresh]
    if early:
        s = min(early, key=lambda s: s.seconds)
        return Verdict(False, f"{len(early)} of {len(sections)} sections shorter than "
                       f"{floor} x watchdog_thresh were reported as hard lockups, the "
                       f"shortest {s.seconds:.2f} s ({s.seconds / thresh:.2f} x thresh) "
                       f"on cpu {s.cpu} ({describe([found[s.seq]])})", m)
    lo = min(s.seconds for s in sections) / thresh
    hi = max(s.seconds for s in sections) / thresh
    return Verdict(True, f"{len(sections)} sections of {lo:.2f}-{hi:.2f} x thresh: none "
                   f"below {floor} x thresh reported; shortest reported "
                   f"{m['shortest_reported_x_thresh']}, longest unreported "
                   f"{m['longest_unreported_x_thresh']} x thresh", m)


def allowed_losses(sent: int, tolerance: float) -> int:
    """NMIs a detector may take in place of its own among `sent` ones that
    came at random moments, if it claims by time with the given tolerance
    (the fraction of time in which it may): the expected number, three
    times over, and at least one where any may be lost. With 8 NMIs and
    1/128, two losses or more come by chance once in 600 runs."""
    return max(1, round(3 * sent * tolerance)) if tolerance and sent else 0


def unknown_nmis(sent: dict[int, int], seen: list[Event], lockups: list[Event],
                 suppressed: list[str], allowed: dict[int, int] | None = None) -> Verdict:
    """Every NMI nobody claims must reach the unknown NMI path, one for one,
    on the CPU it was sent to: sent[cpu] NMIs, as many "Uhhuh" lines, but
    for `allowed[cpu]` the detector may take by its documented tolerance."""
    allowed = allowed or {}
    got: dict[int, int] = {}
    for e in seen:
        got[e.cpu] = got.get(e.cpu, 0) + 1
    m = {"allowed": {str(c): n for c, n in sorted(allowed.items()) if n},
         "sent": {str(c): n for c, n in sorted(sent.items())},
         "reported": {str(c): n for c, n in sorted(got.items())},
         "swallowed": {str(c): n - got.get(c, 0) for c, n in sorted(sent.items())
                       if n != got.get(c, 0)}}
    if suppressed:
        return Verdict(False, "the kernel rate-limited its unknown NMI messages, so they "
                       "cannot be counted: " + "; ".join(suppressed[:3]), m)
    if lockups:
        return Verdict(False, "unexpected: " + describe(lockups), m)
    wrong = {c: (n, got.get(c, 0)) for c, n in sent.items()
             if not n - allowed.get(c, 0) <= got.get(c, 0) <= n}
    extra = {c: n for c, n in got.items() if c not in sent}
    if wrong or extra:
        parts = [f"cpu {c}: {n} sent, {g} reported"
                 + (f" ({allowed[c]} may be lost)" if allowed.get(c) else "")
                 for c, (n, g) in sorted(wrong.items())]
        parts += [f"cpu {c}: none sent, {n} reported" for c, n in sorted(extra.items())]
        return Verdict(False, "unknown NMIs not counted one for one: " + "; ".join(parts), m)
    total, lost = sum(sent.values()), sum(n - got.get(c, 0) for c, n in sent.items())
    extra = f" but {lost}, within the detector's tolerance" if lost else ""
    return Verdict(True, f"{total} unknown NMIs on cpus {sorted(sent)}, each reported once"
                   f"{extra}", m)


def unknown_nmi_panic(sent: NmiSent | None, panics: list[Event], alive: bool) -> Verdict:
    """With kernel.unknown_nmi_panic=1, the first unknown NMI panics."""
    m = {"cpu": sent.cpu if sent else None}
    if not panics:
        why = "the guest is still up" if alive else "the guest died without a panic line"
        return Verdict(False, f"an unknown NMI did not panic: {why}", m)
    p = panics[0]
    if "NMI: Not continuing" not in p.text:
        return Verdict(False, f"panicked for another reason: {p.title}", m)
    if sent is not None and p.time is not None:
        m["panic_latency_s"] = round(p.time - sent.time, 3)
    return Verdict(True, "Kernel panic - not syncing: NMI: Not continuing", m)


def nmi_counts(proc_interrupts: str) -> dict[int, int]:
    """NMIs taken per CPU, from /proc/interrupts (online CPUs only)."""
    lines = proc_interrupts.splitlines()
    if not lines:
        return {}
    cpus = [int(c[3:]) for c in lines[0].split() if c.startswith("CPU")]
    for line in lines[1:]:
        head, _, rest = line.strip().partition(":")
        if head == "NMI":
            counts = rest.split()[:len(cpus)]
            return {cpu: int(n) for cpu, n in zip(cpus, counts)}
    return {}


def untouched(before: dict[int, int], after: dict[int, int], excluded: list[int],
              monitored: list[int], window_s: float, rate: float, bad: list[Event],
              boot_mask: list[int] | None = None) -> Verdict:
    """CPUs outside watchdog_cpumask take no NMI from the detector over the
    window; the monitored ones keep taking theirs (`rate` per second, 0 for a
    detector that sends none). `boot_mask`: watchdog_cpumask as the kernel
    set it at boot (nohz_full=), which must be exactly `monitored`."""
    delta = {c: after.get(c, 0) - before.get(c, 0) for c in sorted(set(before) | set(after))}
    m = {"window_s": window_s, "excluded": excluded, "monitored": monitored,
         "nmis": {str(c): d for c, d in delta.items()}}
    if boot_mask is not None and boot_mask != monitored:
        return Verdict(False, f"watchdog_cpumask is {boot_mask} at boot, want {monitored} "
                       f"(nohz_full={excluded} takes those out)", m)
    if bad:
        return Verdict(False, "unexpected: " + describe(bad), m)
    touched = {c: delta.get(c, 0) for c in excluded if delta.get(c, 0)}
    if touched:
        return Verdict(False, "CPUs outside watchdog_cpumask took NMIs: " + ", ".join(
            f"cpu {c}: {n} in {window_s:.0f} s" for c, n in touched.items()), m)
    want = rate * window_s / 2
    starved = {c: delta.get(c, 0) for c in monitored if delta.get(c, 0) < want}
    if starved:
        return Verdict(False, "the detector stopped: " + ", ".join(
            f"cpu {c} took {n} NMIs in {window_s:.0f} s, want {want:.0f}"
            for c, n in starved.items()), m)
    return Verdict(True, f"cpus {excluded} outside the mask took 0 NMIs in {window_s:.0f} s; "
                   f"monitored cpus took {min((delta.get(c, 0) for c in monitored), default=0)}"
                   " or more", m)


def unbooted(hw_cpus: int, online: list[int], monitored: list[int] | None, boots: int,
             bad: list[Event], lockups: dict[int, tuple[bool, str]]) -> Verdict:
    """A machine with CPUs Linux did not boot (nr_cpus=, maxcpus=): it boots
    once (an NMI to a CPU waiting for its startup IPI resets a QEMU
    machine), the detector monitors exactly the online CPUs, and a lockup on
    each CPU tried is reported."""
    m = {"hw_cpus": hw_cpus, "online": online, "monitored": monitored, "boots": boots,
         "lockups": {str(c): {"passed": ok, "reason": r} for c, (ok, r) in lockups.items()}}
    if boots != 1:
        return Verdict(False, f"the machine booted {boots} times: it was reset", m)
    if bad:
        return Verdict(False, "unexpected: " + describe(bad), m)
    if monitored is not None and monitored != online:
        return Verdict(False, f"the detector monitors cpus {monitored}, online are {online}", m)
    failed = {c: r for c, (ok, r) in lockups.items() if not ok}
    if failed:
        return Verdict(False, "; ".join(f"cpu {c}: {r}" for c, r in failed.items()), m)
    return Verdict(True, f"{len(online)} of {hw_cpus} cpus booted, monitored as such; "
                   f"lockups on cpus {sorted(lockups)} reported", m)


def hpet_users(output: str, channel: int | None, irqs_wanted: int,
               expiries: int | None, expiries_wanted: float, bad: list[Event]) -> Verdict:
    """What guest/tools/hpet-user printed, judged: /dev/hpet never hands
    out the detector's `channel` and its channel interrupts, the emulated
    RTC updates, and the detector kept its expiries meanwhile."""
    handed = re.search(r"^hpet: handed out([\d ]*)\(then: (.*)\)$", output, re.M)
    irqs = re.search(r"^hpet: channel (\d+) irqs (\d+)$", output, re.M)
    rtc = re.search(r"^rtc: updates (\d+)$", output, re.M)
    channels = [int(c) for c in handed.group(1).split()] if handed else []
    m = {"handed_out": channels, "detector_channel": channel,
         "irqs": int(irqs.group(2)) if irqs else None,
         "rtc_updates": int(rtc.group(1)) if rtc else None, "expiries": expiries,
         "output": output.strip().splitlines()}
    if bad:
        return Verdict(False, "unexpected: " + describe(bad), m)
    if channel is not None and channel in channels:
        return Verdict(False, f"/dev/hpet handed out channel {channel}, the detector's", m)
    if not channels:
        return Verdict(False, "/dev/hpet handed out no channel: " + output.strip(), m)
    if not irqs or int(irqs.group(2)) < irqs_wanted:
        return Verdict(False, f"/dev/hpet: want {irqs_wanted} interrupts: {output.strip()}", m)
    if not rtc or int(rtc.group(1)) < 2:
        return Verdict(False, f"the RTC did not update twice: {output.strip()}", m)
    if expiries is not None and expiries < expiries_wanted:
        return Verdict(False, f"the detector had {expiries} expiries meanwhile, want "
                       f"{expiries_wanted:.0f}", m)
    return Verdict(True, f"/dev/hpet handed out channels {channels}, not the detector's "
                   f"({channel}); {m['irqs']} interrupts; the RTC updated; the detector "
                   "went on", m)


def apic_ids(cpuinfo: str) -> dict[int, int]:
    """CPU number -> APIC ID, from the processor and apicid lines of
    /proc/cpuinfo (online CPUs only)."""
    ids: dict[int, int] = {}
    cpu = None
    for line in cpuinfo.splitlines():
        key, _, value = (s.strip() for s in line.partition(":"))
        if key == "processor":
            cpu = int(value)
        elif key == "apicid" and cpu is not None:
            ids[cpu] = int(value)
    return ids


@dataclass(frozen=True)
class IrteStep:
    """The HPET channel's routing at one step of irte-retarget: the
    handling CPU (debugfs), /proc/cpuinfo's APIC IDs, the IOMMU's table,
    and the detector's expiries over the following thresh. `away`: the
    CPU this step took from the detector (out of the mask, offline)."""
    step: str
    away: int | None
    handling_cpu: int
    cpuinfo: str
    table: str
    expiries: tuple[int | None, int | None]


# "APIC: Switched APIC routing to: <name>": Linux's APIC driver, whose
# destination mode the IRTEs take (drivers/iommu/intel/irq_remapping.c).
# Without that line, the 64-bit kernel's first driver
# (arch/x86/kernel/apic/apic_flat_64.c) stayed.
APIC_ROUTING = re.compile(r"APIC: Switched APIC routing to: (.+?)\s*$", re.M)
DEFAULT_APIC_ROUTING = "physical flat"


def apic_routing(console: str) -> str:
    """The APIC driver Linux ended up with, from its boot console."""
    switched = APIC_ROUTING.findall(console)
    return switched[-1] if switched else DEFAULT_APIC_ROUTING


def expected_destination(routing: str, apic_id: int) -> tuple[bool, int]:
    """(logical, destination) of an interrupt aimed at one CPU under
    Linux's APIC driver `routing`. x2APIC cluster mode addresses the CPU by
    its logical x2APIC ID, which the hardware derives from the x2APIC ID
    (Intel SDM vol. 3, 11.12.10.2): the cluster in bits 31:16, one bit of
    16 below. The physical drivers use the APIC ID itself."""
    if routing == "cluster x2apic":
        return True, (apic_id >> 4) << 16 | 1 << (apic_id & 0xf)
    if routing in ("physical flat", "physical x2apic"):
        return False, apic_id
    raise ValueError(f"APIC routing {routing!r}: no rule for its destinations")


def irte_follows(steps: list[IrteStep], x2apic: bool, routing: str,
                 bad: list[Event]) -> Verdict:
    """At every step there is exactly one IRTE with NMI delivery, from the
    HPET's source-id, aimed (in the APIC driver's destination mode) at the
    CPU the detector says handles its NMI, and the expiries go on arriving;
    a CPU taken from the detector no longer handles it (else nothing was
    retargeted). `x2apic`: remapping in x2APIC mode (EIM), which decides
    where the destination sits in the IRTE."""
    m: dict = {"x2apic": x2apic, "routing": routing, "steps": []}
    for s in steps:
        nmi = irte.nmi_entries(irte.parse(s.table))
        apic = apic_ids(s.cpuinfo).get(s.handling_cpu)
        row = {"step": s.step, "away": s.away, "handling_cpu": s.handling_cpu, "apic_id": apic,
               "nmi_irtes": [{"index": e.index, "sid": e.source_id, "logical": e.logical,
                              "dest": e.destination(x2apic), "vector": e.vector}
                             for e in nmi],
               "expiries": list(s.expiries)}
        m["steps"].append(row)
        where = f"{s.step}: "
        if len(nmi) != 1:
            return Verdict(False, where + f"{len(nmi)} IRTEs with NMI delivery, want 1", m)
        e = nmi[0]
        if e.source_id != irte.HPET_SOURCE_ID:
            return Verdict(False, where + f"the NMI IRTE {e.index} is for {e.source_id}, "
                           f"not the HPET ({irte.HPET_SOURCE_ID})", m)
        if apic is None:
            return Verdict(False, where + f"handling cpu {s.handling_cpu} has no APIC ID "
                           "in /proc/cpuinfo (offline?)", m)
        logical, dest = expected_destination(routing, apic)
        got = (e.logical, e.destination(x2apic))
        if got != (logical, dest):
            mode = lambda lg: "logical" if lg else "physical"  # noqa: E731
            return Verdict(False, where + f"the NMI IRTE {e.index} is aimed at {mode(got[0])} "
                           f"{got[1]:#x}; handling cpu {s.handling_cpu} (APIC ID {apic}) is "
                           f"{mode(logical)} {dest:#x} under {routing}", m)
        before, after = s.expiries
        if before is None or after is None or after <= before:
            return Verdict(False, where + f"no expiry reached handling cpu "
                           f"{s.handling_cpu} (nmis {before} -> {after})", m)
        if s.handling_cpu == s.away:
            return Verdict(False, where + f"still handled by cpu {s.away}, which was "
                           "taken away: nothing was retargeted", m)
    if bad:
        return Verdict(False, "unexpected: " + describe(bad), m)
    return Verdict(True, "the NMI IRTE followed the handling cpu: " + " -> ".join(
        f"cpu {s.handling_cpu} ({r['nmi_irtes'][0]['dest']:#x})"
        for s, r in zip(steps, m["steps"])) + f" ({routing})", m)


# What a kernel prints first, and what guest/agent.sh prints once userspace runs.
BOOT_LINE = "Linux version "
AGENT_READY = "harness: agent ready"
# The HPET detector's line once it runs (harness.detector_verdicts uses it too).
ENABLED_ON = r"hpet_hld: enabled on channel (\d+), handling CPU"
# What the crash kernel looks for in /proc/vmcore (guest/tools/vmcore-find):
# the first kernel's report (kernel/watchdog.c) and panic (kernel/panic.c),
# printed in NMI context just before panic() started the crash kernel, so
# in the dump's printk ring but never on the console.
DUMP_REPORT = "Watchdog detected hard LOCKUP on cpu "
DUMP_PANIC = "Kernel panic - not syncing: "


def kdump(text: str, cpu: int, dump: list[str] | None, want_detector: bool,
          bad_kinds: tuple[str, ...]) -> Verdict:
    """The console from just before a hard lockup on `cpu` with
    hardlockup_panic=1 and a crash kernel loaded, and what the crash kernel
    found of DUMP_REPORT and DUMP_PANIC in /proc/vmcore (None: no vmcore).
    The lockup is reported and panics (on the console, or else in the
    dump), the crash kernel boots once, reaches userspace, and prints none
    of `bad_kinds` (a stray NMI from the first kernel's HPET channel would
    be an unknown NMI there); with `want_detector`, its own HPET detector
    comes up on a channel again."""
    at = text.find(BOOT_LINE)
    first, crash = (text, "") if at < 0 else (text[:at], text[at:])
    before, after = parse_text(first), parse_text(crash)
    found = dump or []
    # A record's text in the ring is not terminated: what follows it may be
    # left from an older record (and the format string is found too).
    in_dump = (re.match(r"\d+", line[len(DUMP_REPORT):]) for line in found
               if line.startswith(DUMP_REPORT))
    reported = sorted({e.cpu for e in before if e.kind == "hard_lockup"} |
                      {int(n.group(0)) for n in in_dump if n})
    panics = [e.text.split(DUMP_PANIC, 1)[1] for e in before
              if e.kind == "panic" and DUMP_PANIC in e.text] + \
        [line[len(DUMP_PANIC):] for line in found if line.startswith(DUMP_PANIC)]
    m = {"crash_kernel_boots": crash.count(BOOT_LINE), "dump": found,
         "reported_cpus": reported, "panics": panics,
         "crash_kernel_detector": bool(re.search(ENABLED_ON, crash))}
    if not crash:
        return Verdict(False, "the crash kernel never booted", m)
    if m["crash_kernel_boots"] != 1:
        return Verdict(False, f"{m['crash_kernel_boots']} kernels booted after the panic: "
                       "the crash kernel was reset", m)
    bad = [e for e in after if e.kind in bad_kinds]
    if bad:
        return Verdict(False, "the crash kernel: " + describe(bad), m)
    if AGENT_READY not in crash:
        return Verdict(False, "the crash kernel never reached userspace", m)
    if dump is None:
        return Verdict(False, "the crash kernel has no /proc/vmcore", m)
    if cpu not in reported:
        return Verdict(False, f"no hard lockup report for cpu {cpu}, on the console or in "
                       f"the dump (reports for cpus {reported})", m)
    if not any(p.startswith("Hard LOCKUP") for p in panics):
        return Verdict(False, f"no 'Kernel panic - not syncing: Hard LOCKUP' (panics: "
                       f"{panics})", m)
    if want_detector and not m["crash_kernel_detector"]:
        return Verdict(False, "the crash kernel's HPET detector did not come up", m)
    return Verdict(True, f"hard lockup on cpu {cpu} reported, panic, the crash kernel "
                   "booted, its /proc/vmcore holds the report, no stray NMI"
                   + (", its HPET detector enabled" if want_detector else ""), m)
