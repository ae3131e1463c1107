"""Scenario cases on real guests: every case of the matrix (see conftest),
each a test. A failed case is retried on a fresh guest HARNESS_RETRIES times
(default 1); a case that passes only on a retry passes, and is reported as a
flake in the summary and every report."""
import json

import pytest

from harness.case_runner import run_case
from harness.console_events import Event, format_events

from conftest import CASES, RETRIES


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=pytest.mark.xdist_group(c.guest_key))
             for c in CASES])
def test_scenario(case, pool, record_property):
    record = run_case(case, pool, RETRIES)
    record_property("case", json.dumps(record, default=str))
    # Into JUnit's system-out: what the kernel said during the case.
    case_dir, n = pool.out / record["artifacts"], len(record["attempts"])
    if (case_dir / f"events-attempt{n}.json").is_file():
        events = json.loads((case_dir / f"events-attempt{n}.json").read_text())
        print("--- console events ---\n"
              + format_events([Event(**e) for e in events], as_json=False))
        lines = (case_dir / f"console-attempt{n}.log").read_text().splitlines()
        print("--- console tail ---\n" + "\n".join(lines[-40:]))
    if record["outcome"] == "skip":
        pytest.skip(record["reason"])
    if record["outcome"] == "flake":
        print(f"FLAKE: failed {len(record['attempts']) - 1} time(s) first: "
              f"{record['attempts'][0]['reason']}")
    if record["outcome"] in ("fail", "error"):
        pytest.fail(f"{record['reason']}\nreproduce: {record['reproduce']}\n"
                    f"artifacts: {pool.out / record['artifacts']}\n"
                    f"--- console tail ---\n{record.get('console_tail', '')}",
                    pytrace=False)
