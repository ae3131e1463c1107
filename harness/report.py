"""Reports of a run summary (records.RunSummary, out/results.json): KTAP for
tools, one HTML page for people.

    python -m harness.report out/results.json [--out DIR]

regenerates both reports, and junit.xml, from a saved summary.
"""
import argparse
import base64
import html as htmlmod
import io
import math
import os
import re
import statistics
import sys
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from harness import junit
from harness.records import CaseRecord, Outcome, RunSummary, SummaryError, write_atomic

OUTCOMES = tuple(Outcome)
OK_OUTCOMES = tuple(o for o in Outcome if o.ok)   # a flake passed on retry: not a failure


# --- grouping -------------------------------------------------------------

def by_config(cases: list[CaseRecord]) -> dict[str, list[CaseRecord]]:
    """Cases per detector/machine, in the order the run met them."""
    groups: dict[str, list[CaseRecord]] = {}
    for case in cases:
        groups.setdefault(case.config, []).append(case)
    return groups


def first_line(text) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[0].strip() if lines else ""


# --- KTAP -----------------------------------------------------------------

# kunit_parser stops reading at these console markers (its KTAP_END), even
# inside a diagnostic line, so they are defused by dropping the colon.
_PARSER_STOP = re.compile(r"List of all partitions:|Kernel panic - not syncing: VFS:|"
                          r"reboot: System halted")


def ktap_name(text: str) -> str:
    """A KTAP description: no '#' (starts a directive), no newline, and no
    leading '- ' (TAP parsers would eat it as the separator)."""
    name = " ".join(str(text).replace("#", "_").split())
    name = name.removeprefix("- ").strip()
    return name or "unnamed"


def _ktap_text(text: str) -> str:
    return _PARSER_STOP.sub(lambda m: m.group(0).replace(":", ""), text)


def ktap_diag(label: str, text, indent: str) -> list[str]:
    """'# label: text', continuation lines indented so that none can read as
    a '# Subtest:' header."""
    lines = [_ktap_text(line.rstrip()) for line in str(text).splitlines()] or [""]
    out = [f"{indent}# {label}: {lines[0]}".rstrip()]
    out += [f"{indent}#   {line}".rstrip() for line in lines[1:] if line.strip()]
    return out


def _flake_note(case: CaseRecord) -> str:
    failed = [(i, a) for i, a in enumerate(case.attempts, 1) if not a.passed]
    if not failed:
        return "failed first, passed on retry"
    i, attempt = failed[0]
    why = first_line(attempt.reason) or "no reason recorded"
    return f"failed on attempt {i} ({why}), passed on attempt {len(case.attempts)}"


def ktap_case(case: CaseRecord, num: int, indent: str) -> list[str]:
    outcome, name = case.outcome, ktap_name(case.label)
    lines = []
    if outcome == Outcome.FLAKE:
        lines += ktap_diag("flaky", _flake_note(case), indent)
    elif outcome in (Outcome.FAIL, Outcome.ERROR):
        lines += ktap_diag("reason", case.reason or "none recorded", indent)
    if outcome not in (Outcome.PASS, Outcome.SKIP) and case.reproduce:
        lines += ktap_diag("reproduce", case.reproduce, indent)
    if outcome == Outcome.SKIP:
        lines.append(f"{indent}ok {num} {name} # SKIP {first_line(case.reason)}")
    elif outcome.ok:
        lines.append(f"{indent}ok {num} {name}")
    elif outcome == Outcome.ERROR:
        # ERROR directive: the guest or harness broke, no detector verdict
        lines.append(f"{indent}not ok {num} {name} # ERROR harness or guest error")
    else:
        lines.append(f"{indent}not ok {num} {name}")
    return lines


def ktap_config(name: str, cases: list[CaseRecord], num: int) -> list[str]:
    """One config as a nested test, its cases as subtests, 2 spaces in."""
    name, inner = ktap_name(name), "  "
    lines = [f"{inner}KTAP version 1", f"{inner}# Subtest: {name}", f"{inner}1..{len(cases)}"]
    for i, case in enumerate(cases, 1):
        lines += ktap_case(case, i, inner)
    ok = all(c.outcome.ok for c in cases)
    lines.append(f"{'ok' if ok else 'not ok'} {num} {name}")
    return lines


def ktap(summary: RunSummary) -> str:
    groups = by_config(summary.cases)
    lines = ["KTAP version 1", f"1..{len(groups)}"]
    for num, (name, cases) in enumerate(groups.items(), 1):
        lines += ktap_config(name, cases, num)
    counts = summary.counts()
    lines.append("# totals: " + " ".join(f"{k}:{v}" for k, v in counts.items()))
    return "\n".join(lines) + "\n"


# --- plots ----------------------------------------------------------------

def _number(value) -> float | None:
    """A finite float, else None: bools, dicts (per-CPU latencies), NaN and
    missing values are not plotted."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _cpus(case: CaseRecord) -> int | None:
    cpus = case.spec.get("cpus")
    return cpus if isinstance(cpus, int) and not isinstance(cpus, bool) else None


def series(cases: list[CaseRecord], scenario: str,
           values) -> dict[str, list[tuple[int, float]]]:
    """(vCPU count, value) points per detector; `values(measurements)` gives
    the values of one case."""
    out: dict[str, list[tuple[int, float]]] = {}
    for case in cases:
        cpus = _cpus(case)
        if case.scenario != scenario or cpus is None:
            continue
        points = [(cpus, v) for v in values(case.measurements)]
        if points:
            out.setdefault(case.detector, []).extend(points)
    return out


def latency_values(m: dict) -> list[float]:
    v = _number(m.get("latency_s"))
    return [] if v is None else [v]


def boot_values(m: dict) -> list[float]:
    v = _number(m.get("boot_seconds"))
    return [] if v is None else [v]


def nmi_values(m: dict) -> list[float]:
    rates = m.get("nmi_per_cpu_per_s")
    if not isinstance(rates, list):
        return []
    return [v for v in map(_number, rates) if v is not None]


def scatter_png(title: str, ylabel: str, data: dict[str, list[tuple[int, float]]]) -> bytes:
    """Points per vCPU count, detectors side by side, a bar at each median."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.4), dpi=100)
    FigureCanvasAgg(fig)                 # Agg, whatever backend pyplot would pick
    ax = fig.add_subplot()
    xs = sorted({x for points in data.values() for x, _ in points})
    width = 0.7 / len(data)
    for k, (detector, points) in enumerate(sorted(data.items())):
        shift = (k - (len(data) - 1) / 2) * width
        _scatter_series(ax, detector, points, xs, shift, width, f"C{k}")
    ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_xlabel("vCPUs")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(*_y_range([y for points in data.values() for _, y in points]))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _y_range(ys: list[float]) -> tuple[float, float]:
    """From 0 (so values compare by eye), with headroom above the highest
    point; a negative value (a clock oddity) still shows."""
    low, high = min(0.0, min(ys)), max(ys) * 1.15
    return low, high if high > low else low + 1


def _scatter_series(ax, label, points, xs, shift, width, color) -> None:
    pos = [xs.index(x) + shift for x, _ in points]
    ax.scatter(pos, [y for _, y in points], s=18, color=color, alpha=0.7, label=label)
    for x in sorted({x for x, _ in points}):
        med = statistics.median(y for px, y in points if px == x)
        i = xs.index(x) + shift
        ax.hlines(med, i - width * 0.4, i + width * 0.4, color=color, linewidth=2)


PLOTS = (  # (scenario, title, y label, values of one case, caption)
    ("hard-lockup", "Hard lockup detection latency", "latency (s)", latency_values,
     "Kernel-timestamp delay from injection to the hard lockup report, per vCPU count."),
    ("enabled", "NMI rate per CPU, detector enabled", "NMIs per CPU per s", nmi_values,
     "One point per CPU of each enabled case, per vCPU count."),
    ("boot", "Boot time", "boot (s)", boot_values,
     "Wall-clock boot time per vCPU count."),
)


def plots_html(cases: list[CaseRecord]) -> str:
    parts = []
    for scenario, title, ylabel, values, caption in PLOTS:
        data = series(cases, scenario, values)
        if not data:
            parts.append(f'<p class="note">{esc(title)}: no data from '
                         f'<code>{esc(scenario)}</code> cases in this run.</p>')
            continue
        png = base64.b64encode(scatter_png(title, ylabel, data)).decode("ascii")
        parts.append(f'<figure><img src="data:image/png;base64,{png}" alt="{esc(title)}">'
                     f"<figcaption>{esc(caption)} Bars: medians.</figcaption></figure>")
    return "<h2>Plots</h2>\n" + "\n".join(parts)


# --- the reporting boundary (boundary-sweep cases) -------------------------

def boundary(cases: list[CaseRecord]) -> dict[str, dict]:
    """Per detector, over its boundary-sweep cases: sections and reports per
    length (in watchdog_thresh), the shortest reported and the longest
    unreported section, and the floor the detector must respect."""
    out: dict[str, dict] = {}
    for case in cases:
        m = case.measurements
        if case.scenario != "boundary-sweep" or not isinstance(m.get("by_length"), dict):
            continue
        d = out.setdefault(case.detector, {"lengths": {}, "shortest": None,
                                              "longest": None, "floor": m.get("floor_x_thresh"),
                                              "cases": 0})
        d["cases"] += 1
        for length, row in m["by_length"].items():
            acc = d["lengths"].setdefault(float(length), [0, 0])
            acc[0] += row.get("sections", 0)
            acc[1] += row.get("reported", 0)
        for key, pick, field in (("shortest", min, "shortest_reported_x_thresh"),
                                 ("longest", max, "longest_unreported_x_thresh")):
            v = _number(m.get(field))
            if v is not None:
                d[key] = v if d[key] is None else pick(d[key], v)
    return out


def boundary_png(data: dict[str, dict]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, (detector, d) in enumerate(sorted(data.items())):
        xs = sorted(d["lengths"])
        ax.plot(xs, [d["lengths"][x][1] / max(d["lengths"][x][0], 1) for x in xs],
                marker="o", color=f"C{k}", label=detector)
        if _number(d["floor"]) is not None:
            ax.axvline(d["floor"], color=f"C{k}", linestyle=":", linewidth=1)
    ax.set_xlabel("interrupts-off section (x watchdog_thresh)")
    ax.set_ylabel("fraction reported")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Reporting boundary")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def boundary_html(cases: list[CaseRecord]) -> str:
    data = boundary(cases)
    if not data:
        return ""
    lengths = sorted({x for d in data.values() for x in d["lengths"]})
    head = "".join(f"<th>{x:.2f}</th>" for x in lengths)
    rows = []
    for detector, d in sorted(data.items()):
        cells = "".join(
            f"<td>{d['lengths'][x][1]}/{d['lengths'][x][0]}</td>" if x in d["lengths"]
            else '<td class="none">-</td>' for x in lengths)
        rows.append(f"<tr><th>{esc(detector)}</th><td>{esc(d['floor'])}</td>"
                    f"<td>{esc(d['shortest'])}</td><td>{esc(d['longest'])}</td>{cells}</tr>")
    png = base64.b64encode(boundary_png(data)).decode("ascii")
    return ("<h2>Reporting boundary</h2>\n<p>Interrupts-off sections at random phases "
            "(<code>boundary-sweep</code>), lengths in watchdog_thresh: sections reported "
            "/ injected. No section below the floor may be reported.</p>\n"
            f"<table><tr><th>detector</th><th>floor</th><th>shortest reported</th>"
            f"<th>longest unreported</th>{head}</tr>\n" + "\n".join(rows) + "</table>\n"
            f'<figure><img src="data:image/png;base64,{png}" alt="Reporting boundary">'
            "<figcaption>Fraction of sections reported per length; dotted: each "
            "detector's floor.</figcaption></figure>")


# --- HTML -----------------------------------------------------------------

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; vertical-align: top; }
th { background: #eee; text-align: left; }
td.cell { text-align: center; min-width: 4em; }
.pass { background: #c8e6c9; } .flake { background: #ffe0b2; }
.fail, .error { background: #ffcdd2; } .none { color: #999; } .skip { background: #eeeeee; }
.detail { display: block; font-size: 0.85em; }
.case { border-left: 6px solid #bbb; padding: 0.2em 1em; margin: 1em 0; }
.case.fail, .case.error { border-color: #e53935; } .case.flake { border-color: #fb8c00; }
.case.fail, .case.error, .case.flake { background: none; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
code { background: #f3f3f3; padding: 0 0.2em; }
.note { color: #666; font-style: italic; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 0.1em 1em; }
dl.meta dt { font-weight: bold; } dl.meta dd { margin: 0; }
"""


def esc(value) -> str:
    return htmlmod.escape(str(value), quote=True)


def duration(seconds) -> str:
    s = _number(seconds)
    if s is None:
        return "?"
    minutes, secs = divmod(round(s), 60)
    return f"{minutes} min {secs} s" if minutes else f"{s:.1f} s"


def cases_per_minute(n: int, wall_s) -> str:
    wall = _number(wall_s)
    return f"{n / (wall / 60):.2f}" if wall and wall > 0 else "?"


def header_html(meta: dict, cases: list[CaseRecord]) -> str:
    counts = RunSummary(meta, cases).counts()
    rows = [("started", esc(meta.get("started", "?"))),
            ("wall time", esc(duration(meta.get("wall_s")))),
            ("accelerator", esc(meta.get("accel", "?"))),
            ("host CPUs / jobs", f"{esc(meta.get('host_cpus', '?'))} / {esc(meta.get('jobs', '?'))}"),
            ("cases", f"{len(cases)} ({esc(cases_per_minute(len(cases), meta.get('wall_s')))} per minute)"),
            ("outcomes", ", ".join(f'<span class="{k}">{k} {v}</span>' for k, v in counts.items())),
            ("matrix", f"<code>{esc(meta.get('matrix', '?'))}</code>"),
            ("command", f"<code>{esc(meta.get('command', '?'))}</code>")]
    if meta.get("interrupted"):
        rows.append(("interrupted", esc(meta["interrupted"])))
    kernels = meta.get("kernels")
    if isinstance(kernels, dict):
        rows += [(f"kernel {esc(k)}", esc(v)) for k, v in kernels.items()]
    qemu = meta.get("qemu") or sorted({c.qemu for c in cases if c.qemu})
    if qemu:
        rows.append(("QEMU", "<br>".join(esc(q) for q in
                                         ([qemu] if isinstance(qemu, str) else qemu))))
    items = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    return f'<h1>HPET NMI hardlockup detector: run report</h1>\n<dl class="meta">{items}</dl>'


def cell_class(cases: list[CaseRecord]) -> str:
    """The worst outcome colours the cell: a real failure hides a flake."""
    outcomes = {c.outcome for c in cases}
    for worst in (Outcome.FAIL, Outcome.ERROR, Outcome.FLAKE, Outcome.SKIP):
        if worst in outcomes:
            return worst
    return Outcome.PASS


def where(case: CaseRecord) -> str:
    return f"cpu{case.cpu}" if case.cpu is not None else case.label


def cell_html(cases: list[CaseRecord], anchors: dict[str, str]) -> str:
    if not cases:
        return '<td class="cell none">&ndash;</td>'
    ok = sum(c.outcome.ok for c in cases)
    tip = "\n".join(f"{where(c)}: {c.outcome}: {first_line(c.reason)}" for c in cases)
    bad = [f'<a href="#{anchors[c.id]}">{esc(c.outcome)} {esc(where(c))}</a>'
           for c in cases if c.outcome != Outcome.PASS]
    detail = f'<span class="detail">{", ".join(bad)}</span>' if bad else ""
    return (f'<td class="cell {cell_class(cases)}" title="{esc(tip)}">'
            f"{ok}/{len(cases)}{detail}</td>")


def matrix_html(cases: list[CaseRecord], anchors: dict[str, str]) -> str:
    scenarios = list(dict.fromkeys(c.scenario for c in cases))
    head = "".join(f"<th>{esc(s)}</th>" for s in scenarios)
    rows = []
    for group in by_config(cases).values():
        first = group[0]
        cells = "".join(cell_html([c for c in group if c.scenario == s], anchors)
                        for s in scenarios)
        rows.append(f'<tr><th>{esc(first.detector)}</th><th>{esc(first.machine)}</th>'
                    f"{cells}</tr>")
    return ('<h2>Results</h2>\n<table id="matrix"><thead><tr><th>detector</th><th>machine</th>'
            f'{head}</tr></thead>\n<tbody>\n{chr(10).join(rows)}\n</tbody></table>')


def artifacts_href(path, prefix: str) -> str | None:
    """A relative link, or None for a path that would leave the report's
    tree (absolute, or with a scheme)."""
    if not isinstance(path, str) or not path:
        return None
    p = PurePosixPath(path)
    if p.is_absolute() or ":" in path:
        return None
    return quote(str(PurePosixPath(prefix) / p) if prefix else path) + "/"


def attempts_html(attempts) -> str:
    if not attempts:
        return ""
    items = "".join(
        f"<li>{'passed' if a.passed else 'failed'} in {esc(duration(a.duration_s))}"
        f": {esc(a.reason)}</li>" for a in attempts)
    return f"<p>Attempts:</p><ol>{items}</ol>"


def failure_html(case: CaseRecord, anchor: str, prefix: str) -> str:
    outcome = case.outcome
    parts = [f'<section class="case {outcome}" id="{anchor}">',
             f"<h3>{esc(case.id)} &mdash; {esc(outcome)}</h3>",
             f"<p>{esc(case.reason or 'no reason recorded')}</p>",
             attempts_html(case.attempts)]
    if case.reproduce:
        parts.append(f"<p>Reproduce: <code>{esc(case.reproduce)}</code></p>")
    href = artifacts_href(case.artifacts, prefix)
    if href:
        parts.append(f'<p>Artifacts: <a href="{esc(href)}">{esc(case.artifacts)}</a></p>')
    elif case.artifacts:
        parts.append(f"<p>Artifacts: <code>{esc(case.artifacts)}</code></p>")
    if case.console_tail:
        parts.append(f"<p>Console tail:</p><pre>{esc(case.console_tail)}</pre>")
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


SEVERITY = {Outcome.FAIL: 0, Outcome.ERROR: 1, Outcome.FLAKE: 2, Outcome.SKIP: 3}


def failures_html(cases: list[CaseRecord], anchors: dict[str, str], prefix: str) -> str:
    bad = sorted((c for c in cases if c.outcome != Outcome.PASS),
                 key=lambda c: SEVERITY[c.outcome])         # stable: run order within
    if not bad:
        return "<h2>Failures</h2>\n<p>Every case passed at the first attempt.</p>"
    return "<h2>Failures, flakes and skips</h2>\n" + "\n".join(
        failure_html(c, anchors[c.id], prefix) for c in bad)


def html(summary: RunSummary, link_prefix: str = "") -> str:
    """The report page. `link_prefix` is the path from the page to the
    summary's output dir, for artifact links when the page lives elsewhere."""
    cases, meta = summary.cases, summary.meta
    # anchors by position: ids are only assumed unique, not trusted to be
    anchors = {c.id: f"case-{i}" for i, c in reversed(list(enumerate(cases)))}
    body = [header_html(meta, cases), matrix_html(cases, anchors),
            failures_html(cases, anchors, link_prefix), boundary_html(cases),
            plots_html(cases)]
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>Run report {esc(meta.get('started', ''))}</title>"
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


# --- files ----------------------------------------------------------------

def write_reports(summary: RunSummary, out_dir: Path,
                  link_prefix: str = "") -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # render both first, so an error leaves no new file at all
    texts = {"html": html(summary, link_prefix), "ktap": ktap(summary)}
    paths = {kind: out_dir / f"report.{kind}" for kind in texts}
    for kind, text in texts.items():
        write_atomic(paths[kind], text)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.report",
                                     description="Regenerate report.html, report.ktap "
                                                 "and junit.xml from a saved run summary.")
    parser.add_argument("results", type=Path, help="the summary, e.g. out/results.json")
    parser.add_argument("--out", type=Path, help="output dir (default: the summary's dir)")
    args = parser.parse_args(argv)
    out_dir = args.out or args.results.parent
    # artifact paths are relative to the summary's dir, the page may be elsewhere
    prefix = os.path.relpath(args.results.parent.resolve(), out_dir.resolve())
    try:
        summary = RunSummary.load(args.results)
        paths = write_reports(summary, out_dir, "" if prefix == "." else prefix)
        # the cases' console events and tails: from their artifacts, next to
        # the summary
        paths["junit"] = out_dir / "junit.xml"
        write_atomic(paths["junit"], junit.xml(summary, args.results.parent))
    except (SummaryError, OSError) as e:
        print(f"harness.report: error: {e}", file=sys.stderr)
        return 2
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
