"""Verdicts of the contract scenarios, as pure functions of what a scenario
recorded: the module's record of what it injected, and the console's
events. No guest and no I/O here, so a captured log is a regression test
(tests/test_verdicts.py).
"""
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
