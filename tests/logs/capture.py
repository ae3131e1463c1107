"""Keep a case of a real run as a verdict regression test.

    .venv/bin/python tests/logs/capture.py contract|platform OUT/results.json CASE_ID NAME

writes tests/logs/KIND/NAME/: console.log (the case's console from its
start, as the runner kept it), expect.json (scenario, detector,
watchdog_thresh, the kernel and machine, and the verdict the run gave),
and what the scenario recorded: for contract cases inject.log (the
lockup_inject records kept in the case's measurements), for platform
cases record.json (the measurements). tests/test_verdicts.py judges them
again without QEMU.
"""
import json
import sys
from pathlib import Path

KINDS = ("contract", "platform")


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
    (dest / "console.log").write_text(
        (out / c["artifacts"] / f"console-attempt{attempt}.log").read_text())
    reason = c["reason"]
    expect = {"scenario": c["scenario"], "detector": c["detector"],
              "thresh": c["spec"]["watchdog_thresh"],
              "passed": c["outcome"] in ("pass", "flake"),
              "reason_contains": reason.split(" (line ")[0].split(":")[0], "run_reason": reason,
              "kernel": c.get("kernel"), "machine": c.get("machine")}
    if kind == "contract":
        (dest / "inject.log").write_text("\n".join(m["inject_log"]) + "\n")
        expect.update(qmp=m.get("qmp", 0), handling_cpu=m.get("handling_cpu"))
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
