"""Verdicts of the contract scenarios, as pure functions of what a scenario
recorded: the module's record of what it injected, and the console's
events. No guest and no I/O here, so a captured log is a regression test
(tests/test_verdicts.py).
"""
import re
from dataclasses import dataclass

from harness import expectations
from harness.console_events import Event, describe
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
              monitored: list[int], window_s: float, rate: float, bad: list[Event]) -> Verdict:
    """CPUs outside watchdog_cpumask take no NMI from the detector over the
    window; the monitored ones keep taking theirs (`rate` per second, 0 for a
    detector that sends none)."""
    delta = {c: after.get(c, 0) - before.get(c, 0) for c in sorted(set(before) | set(after))}
    m = {"window_s": window_s, "excluded": excluded, "monitored": monitored,
         "nmis": {str(c): d for c, d in delta.items()}}
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
