"""JUnit XML of a run summary, for CI systems that show test results.

One <testcase> per case: classname its config (detector/machine), name the
case within it, as in the KTAP report. A failed case has a <failure> (an
<error> when the guest or harness broke) with its reason and reproduce
command; every case's <system-out> has the console events and the console
tail of its last attempt, read from its artifacts under the run's output
directory.
"""
import json
import re
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

from harness.console_events import Event, format_events
from harness.records import CaseRecord, Outcome, RunSummary

TAIL_LINES = 40
# XML 1.0 cannot carry these, escaped or not (a console has \x1b, \x00...).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text) -> str:
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group(0)):02x}", str(text))


def console_output(record: CaseRecord, out: Path) -> str:
    """The last attempt's console events and tail, from the case's artifacts."""
    n = len(record.attempts)
    case_dir = out / record.artifacts
    parts = []
    events, console = case_dir / f"events-attempt{n}.json", case_dir / f"console-attempt{n}.log"
    found = json.loads(events.read_text()) if events.is_file() else []
    if found:
        parts.append("--- console events ---\n" + format_events(
            [Event(**e) for e in found], as_json=False))
    lines = console.read_text(errors="replace").splitlines() if console.is_file() else []
    if any(line.strip() for line in lines):
        parts.append("--- console tail ---\n" + "\n".join(lines[-TAIL_LINES:]))
    if record.outcome == Outcome.FLAKE:
        parts.append(f"FLAKE: failed {n - 1} time(s) first: {record.attempts[0].reason}")
    return "\n".join(parts)


def testcase(record: CaseRecord, out: Path) -> ET.Element:
    tc = ET.Element("testcase", classname=record.config, name=record.label,
                    time=f"{record.duration_s:.3f}")
    if record.outcome == Outcome.SKIP:
        ET.SubElement(tc, "skipped", message=xml_text(record.reason))
    elif not record.outcome.ok:
        message = f"{record.reason}\nreproduce: {record.reproduce}"
        bad = ET.SubElement(tc, "failure" if record.outcome == Outcome.FAIL else "error",
                            message=xml_text(message))
        bad.text = xml_text(f"{message}\nartifacts: {out / record.artifacts}\n"
                            f"--- console tail ---\n{record.console_tail}")
    ET.SubElement(tc, "system-out").text = xml_text(console_output(record, out))
    return tc


def xml(summary: RunSummary, out: Path) -> str:
    """The document for a summary whose artifacts are under `out`."""
    records, meta, counts = summary.cases, summary.meta, summary.counts()
    attrs = {"tests": str(len(records)), "failures": str(counts[Outcome.FAIL]),
             "errors": str(counts[Outcome.ERROR]), "skipped": str(counts[Outcome.SKIP]),
             "time": f"{meta.get('wall_s', 0) or 0:.1f}"}
    suites = ET.Element("testsuites", name="harness run", **attrs)
    suite = ET.SubElement(suites, "testsuite", name=xml_text(meta.get("matrix", "harness run")),
                          timestamp=str(meta.get("started", "")),
                          hostname=socket.gethostname(), **attrs)
    for record in records:
        suite.append(testcase(record, Path(out)))
    ET.indent(suites, space=" ")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, "unicode") + "\n"
