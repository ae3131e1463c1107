"""Collect every scenario case's record (also from pytest-xdist workers, via
the report's user_properties), show progress while the run goes on, and at
the end write out/results.json, the HTML and KTAP reports, and a summary."""
import json
import os
import sys
import time
from datetime import datetime, timezone

import pytest
from tqdm import tqdm

from harness import report as report_mod

from conftest import OUT

_state = {"records": [], "total": 0, "bar": None, "t0": time.monotonic(),
          "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _is_controller(config) -> bool:
    return not hasattr(config, "workerinput")


def _scenario_count(ids) -> int:
    return sum(1 for i in ids if "test_scenarios.py::" in i)


def pytest_collection_modifyitems(session, config, items):
    if _is_controller(config) and not config.getoption("numprocesses", None):
        _state["total"] = _scenario_count(i.nodeid for i in items)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    _state["total"] = max(_state["total"], _scenario_count(ids))


def _progress(report, record: dict | None) -> None:
    """A live bar on a terminal; a line per case in a log (CI)."""
    if not _state["total"]:
        return
    _state["done"] = _state.get("done", 0) + 1
    name = report.nodeid.split("[", 1)[-1].rstrip("]")
    if sys.stderr.isatty():
        if _state["bar"] is None:
            _state["bar"] = tqdm(total=_state["total"], unit="case", file=sys.stderr,
                                 dynamic_ncols=True,
                                 bar_format="{n}/{total} cases [{elapsed}<{remaining}] {desc}")
        _state["bar"].update(1)
        _state["bar"].set_description_str(name)
        return
    done, total = _state["done"], _state["total"]
    elapsed = time.monotonic() - _state["t0"]
    eta = elapsed / done * (total - done)
    outcome = record["outcome"].upper() if record else report.outcome.upper()
    reason = f": {record['reason']}" if record else ""
    print(f"[{done}/{total} {elapsed / 60:.0f}m ETA {eta / 60:.0f}m] {outcome} {name}{reason}",
          file=sys.stderr, flush=True)


def pytest_runtest_logreport(report):
    if "test_scenarios.py::" not in report.nodeid:
        return
    finished = report.when == "call" or (report.when == "setup" and not report.passed)
    if not finished:
        return
    record = None
    for name, value in report.user_properties:
        if name == "case":
            record = json.loads(value)
            _state["records"].append(record)
    _progress(report, record)


def summary(config) -> dict:
    records = _state["records"]
    kernels = {r["detector"]: r["kernel"] for r in records}
    return {"meta": {
        "started": _state["started"],
        "wall_s": round(time.monotonic() - _state["t0"], 1),
        "accel": ",".join(sorted({r["accel"] for r in records})),
        "host_cpus": os.cpu_count(),
        "jobs": config.getoption("numprocesses", None) or 1,
        "matrix": os.environ.get("HARNESS_MATRIX", "matrix/nightly.toml"),
        "command": os.environ.get("HARNESS_COMMAND", "pytest " + " ".join(config.invocation_params.args)),
        "kernels": kernels,
        "qemu": sorted({r["qemu"] for r in records if r.get("qemu")})},
        "cases": records}


def pytest_sessionfinish(session, exitstatus):
    if not _is_controller(session.config) or not _state["records"]:
        return
    if _state["bar"] is not None:
        _state["bar"].close()
    s = summary(session.config)
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = OUT / "results.json.tmp"
    tmp.write_text(json.dumps(s, indent=1, default=str))
    os.replace(tmp, OUT / "results.json")
    _state["written"] = report_mod.write_reports(s, OUT)
    _state["summary"] = s


def pytest_terminal_summary(terminalreporter):
    s = _state.get("summary")
    if not s:
        return
    tr = terminalreporter
    tr.section("scenario measurements")
    keys = ("boot_seconds", "settle_seconds", "latency_s", "nmi_per_cpu_per_s",
            "tsc_error_ns", "knock_on_cpus")
    for r in s["cases"]:
        shown = ", ".join(f"{k}={r['measurements'][k]}" for k in keys if k in r["measurements"])
        if shown:
            tr.write_line(f"{r['outcome'].upper():<5} {r['id']:<48} {shown}")
    counts = report_mod.outcome_counts(s["cases"])
    tr.section("scenario summary")
    for r in s["cases"]:
        if r["outcome"] == "flake":
            tr.write_line(f"FLAKE {r['id']}: first attempt: {r['attempts'][0]['reason']}")
    tr.write_line(", ".join(f"{n} {o}" for o, n in counts.items())
                  + f" in {s['meta']['wall_s'] / 60:.1f} min")
    for what, path in _state["written"].items():
        tr.write_line(f"{what}: {path}")
    tr.write_line(f"results: {OUT / 'results.json'}")
