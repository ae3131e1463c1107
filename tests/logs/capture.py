"""Keep a case of a real run as a verdict regression test.

    .venv/bin/python tests/logs/capture.py KIND OUT/results.json CASE_ID NAME

KIND: contract, platform, lockup, detector or disturbance. Writes
tests/logs/KIND/NAME/:
console.log, expect.json (scenario, detector, watchdog_thresh, the kernel
and machine, and the verdict the run gave), and what the scenario
recorded: for contract cases inject.log (the lockup_inject records kept
in the case's measurements), for the others record.json (the
measurements). contract and platform: console.log is the case's console
from its start, as the runner kept it. lockup, detector and disturbance:
the lines of the guest's whole console that the scenario's observation
covers (from its first "start" line, 0 if it has none, to its last "end",
nested ones included: a soak's canary, a sequence's steps, the lockup
made after a disturbance); expect.json also has the machine spec, that
start line and the events per kind parsed from those lines when kept.
tests/test_verdicts.py and tests/test_lockup_verdicts.py judge them again
without QEMU.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from harness import console_events  # noqa: E402

KINDS = ("contract", "platform", "lockup", "detector", "disturbance")


def bounds(obs, starts=None, ends=None) -> tuple[list[int], list[int]]:
    """Every "start" and "end" line in an observation, nested ones too."""
    starts, ends = ([], []) if starts is None else (starts, ends)
    if isinstance(obs, dict):
        starts += [obs["start"]] if "start" in obs else []
        ends += [obs["end"]] if "end" in obs else []
        for v in obs.values():
            bounds(v, starts, ends)
    elif isinstance(obs, list):
        for v in obs:
            bounds(v, starts, ends)
    return starts, ends


def main(kind: str, results: str, case_id: str, name: str) -> int:
    if kind not in KINDS:
        print(f"capture: kind {kind!r}: one of {', '.join(KINDS)}", file=sys.stderr)
        return 2
    out = Path(results).parent
    cases = {c["id"]: c for c in json.loads(Path(results).read_text())["cases"]}
    if case_id not in cases:
        print(f"capture: no case {case_id!r} in {results}", file=sys.stderr)
        return 2
    c = cases[case_id]
    m = c["measurements"]
    dest = Path(__file__).parent / kind / name
    dest.mkdir(parents=True, exist_ok=False)
    attempt = len(c["attempts"])
    case_dir = out / c["artifacts"]
    if kind in ("contract", "platform"):
        (dest / "console.log").write_text(
            (case_dir / f"console-attempt{attempt}.log").read_text())
    reason = c["reason"]
    expect = {"scenario": c["scenario"], "detector": c["detector"],
              "thresh": c["spec"]["watchdog_thresh"],
              "passed": c["outcome"] in ("pass", "flake"),
              "reason_contains": reason.split(" (line ")[0].split(":")[0], "run_reason": reason,
              "kernel": c.get("kernel"), "machine": c.get("machine")}
    if kind == "contract":
        (dest / "inject.log").write_text("\n".join(m["inject_log"]) + "\n")
        expect.update(qmp=m.get("qmp", 0), handling_cpu=m.get("handling_cpu"))
    elif kind in ("lockup", "detector", "disturbance"):
        # from the first "start" to the last "end" of the observation and
        # the ones nested in it (a soak's canary, a sequence's steps)
        starts, ends = bounds(m["observation"])
        start, end = min(starts, default=0), max(ends)
        guest = case_dir / c["attempts"][-1]["guest"] / "console.log"
        lines = guest.read_bytes().decode("utf-8", errors="replace").split("\n")
        (dest / "console.log").write_text("\n".join(lines[start:end]) + "\n")
        events: dict[str, int] = {}
        for e in console_events.parse_file(dest / "console.log"):
            events[e.kind] = events.get(e.kind, 0) + 1
        expect.update(spec=c["spec"], start=start, events=events)
        (dest / "record.json").write_text(json.dumps(m, indent=1) + "\n")
    else:
        (dest / "record.json").write_text(json.dumps(m, indent=1) + "\n")
    (dest / "expect.json").write_text(json.dumps(expect, indent=1) + "\n")
    print(f"capture: {dest}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 5:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
