"""Keep a platform case (harness/platform_scenarios.py) of a real run as a
verdict regression test.

    .venv/bin/python tests/logs/platform/capture.py OUT/results.json CASE_ID NAME

writes tests/logs/platform/NAME/: console.log (the case's console from its
start), record.json (what the scenario recorded: its measurements) and
expect.json (scenario, detector, watchdog_thresh, the kernel and machine,
and the verdict the run gave). tests/test_verdicts.py judges them again.
"""
import json
import sys
from pathlib import Path


def main(results: str, case_id: str, name: str) -> int:
    out = Path(results).parent
    cases = {c["id"]: c for c in json.loads(Path(results).read_text())["cases"]}
    if case_id not in cases:
        print(f"capture: no case {case_id!r} in {results}", file=sys.stderr)
        return 2
    c = cases[case_id]
    dest = Path(__file__).parent / name
    dest.mkdir(parents=True, exist_ok=False)
    attempt = len(c["attempts"])
    (dest / "console.log").write_text(
        (out / c["artifacts"] / f"console-attempt{attempt}.log").read_text())
    (dest / "record.json").write_text(json.dumps(c["measurements"], indent=1) + "\n")
    expect = {"scenario": c["scenario"], "detector": c["detector"],
              "thresh": c["spec"]["watchdog_thresh"],
              "passed": c["outcome"] in ("pass", "flake"),
              "reason_contains": c["reason"].split(":")[0], "run_reason": c["reason"],
              "kernel": c.get("kernel"), "machine": c.get("machine")}
    (dest / "expect.json").write_text(json.dumps(expect, indent=1) + "\n")
    print(f"capture: {dest}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print("usage: capture.py RESULTS_JSON CASE_ID NAME", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
