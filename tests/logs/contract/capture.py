"""Keep a contract case of a real run as a verdict regression test.

    .venv/bin/python tests/logs/contract/capture.py OUT/results.json CASE_ID NAME

writes tests/logs/contract/NAME/: console.log (the case's console from its
start, as the runner kept it), inject.log (the lockup_inject records the
case kept in its measurements) and expect.json (scenario, detector,
watchdog_thresh, QMP NMIs, and the verdict the run gave).
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
    m = c["measurements"]
    dest = Path(__file__).parent / name
    dest.mkdir(parents=True, exist_ok=False)
    attempt = len(c["attempts"])
    (dest / "console.log").write_text(
        (out / c["artifacts"] / f"console-attempt{attempt}.log").read_text())
    (dest / "inject.log").write_text("\n".join(m["inject_log"]) + "\n")
    reason = c["reason"]
    expect = {"scenario": c["scenario"], "detector": c["detector"],
              "thresh": c["spec"]["watchdog_thresh"], "qmp": m.get("qmp", 0),
              "handling_cpu": m.get("handling_cpu"),
              "passed": c["outcome"] in ("pass", "flake"),
              "reason_contains": reason.split(" (line ")[0].split(":")[0], "run_reason": reason,
              "kernel": c.get("kernel"), "machine": c.get("machine")}
    (dest / "expect.json").write_text(json.dumps(expect, indent=1) + "\n")
    print(f"capture: {dest}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
