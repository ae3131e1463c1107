"""The in-process runner's parts that need no guest: how cases are grouped
for workers, what a run request accepts, the summary it makes, and the
JUnit XML it writes (from a captured run's summary, tests/data/
results-sample.json). The whole runner on real guests: test_run_reports."""
import subprocess
import sys
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness import junit, matrix, report, runner
from harness.records import Outcome, RunSummary, SummaryError
from harness.errors import HarnessError
from harness.paths import REPO
from test_cleanup import qemus_for

SAMPLE = REPO / "tests" / "data" / "results-sample.json"


def cases(**group):
    return matrix.name_cases(matrix.expand_group("test", {"detector": "hpet", **group}))


def test_machine_groups_keep_a_machine_whole_and_start_with_the_largest():
    cs = cases(cpus=[1, 2], iommu=[False, True], scenarios=["boot", "hard-lockup@spread"])
    groups = runner.machine_groups(cs)
    seen = [i for g in groups for i in g]
    assert sorted(seen) == list(range(len(cs)))              # every case once
    for g in groups:
        assert len({cs[i].guest_key for i in g}) == 1         # one machine each
        assert g == sorted(g)                                 # in run order
    assert len(groups) == len({c.guest_key for c in cs}) == 4
    assert [len(g) for g in groups] == sorted((len(g) for g in groups), reverse=True)
    assert len(groups[0]) == 3 and len(groups[-1]) == 2       # 2 cpus: boot + 2 CPUs


@pytest.mark.parametrize("kw, message", [
    ({"jobs": 0}, "jobs must be at least 1"),
    ({"retries": -1}, "retries must be 0 or more"),
    ({"cases": ()}, "at least one case"),
    ({"scenario_args": {"soaking": {"seconds": 5}}}, "unknown scenario 'soaking'")])
def test_a_bad_request_is_refused(kw, message, tmp_path):
    args = {"cases": tuple(cases(cpus=2, scenarios=["boot"])), "out": tmp_path, **kw}
    with pytest.raises(HarnessError, match=message):
        runner.RunRequest(**args)


def test_detectors_in_case_order():
    cs = matrix.name_cases(matrix.expand_group(
        "test", {"detector": ["buddy", "hpet"], "cpus": 2, "scenarios": ["boot"]}))
    assert runner.RunRequest(tuple(cs), Path("x")).detectors == ["buddy", "hpet"]


def test_summary_has_the_runs_facts():
    records = RunSummary.load(SAMPLE).cases
    request = runner.RunRequest(tuple(cases(cpus=2, scenarios=["boot"])), Path("x"),
                                jobs=2, matrix="matrix/smoke.toml", command="harness run x")
    s = runner.summarise(records, request, "tcg", "2026-01-01T00:00:00+00:00", 61.26)
    assert s.cases == records
    assert s.meta["wall_s"] == 61.3 and s.meta["jobs"] == 2
    assert s.meta["matrix"] == "matrix/smoke.toml"
    assert s.meta["command"] == "harness run x"
    assert s.meta["kernels"] == {r.detector: r.kernel for r in records}
    assert s.meta["accel"] == ",".join(sorted({r.accel for r in records}))


def run_dir(tmp_path) -> tuple[RunSummary, Path]:
    """The sample summary with one case of each outcome and the artifacts of
    its last attempts, as a run leaves them."""
    summary = json.loads(SAMPLE.read_text())
    cs = summary["cases"]
    failed = {"passed": False, "reason": "first try failed", "duration_s": 1.0}
    cs[1]["outcome"], cs[1]["attempts"] = "flake", [failed] + cs[1]["attempts"]
    cs[2].update(outcome="error", reason="guest hung", attempts=[failed])
    spare = [c for c in cs[3:] if c["outcome"] == "pass"][-1]
    spare.update(outcome="skip", reason="skipped: x2apic needs QEMU 9.0",
                 attempts=[{"passed": True, "reason": "skipped", "skipped": True}])
    for c in cs:
        d = tmp_path / c["artifacts"]
        d.mkdir(parents=True, exist_ok=True)
        n = len(c["attempts"])
        (d / f"console-attempt{n}.log").write_text(
            f"[    1.000000][    C0] {c['id']} says \x1b[0mhi\x00\n")
        (d / f"events-attempt{n}.json").write_text(json.dumps(
            [{"kind": "hard_lockup", "time": 1.0, "cpu": 1, "line": 1,
              "title": "hard LOCKUP on cpu 1", "text": "watchdog: ..."}]))
    return RunSummary.from_dict(summary), tmp_path


def test_junit_has_every_case_with_its_outcome(tmp_path):
    summary, out = run_dir(tmp_path)
    text = junit.xml(summary, out)
    root = ET.fromstring(text)                  # parses: nothing XML cannot carry
    tcs = list(root.iter("testcase"))
    assert [f"{t.get('classname')}/{t.get('name')}" for t in tcs] == \
        [c.id for c in summary.cases]
    counts = summary.counts()
    assert root.get("tests") == str(len(tcs))
    assert root.get("failures") == str(counts["fail"]) != "0"
    assert root.get("errors") == str(counts["error"]) == "1"
    assert root.get("skipped") == str(counts["skip"]) == "1"
    for tc, case in zip(tcs, summary.cases):
        failure, error = tc.find("failure"), tc.find("error")
        if case.outcome == "fail":
            assert failure is not None and error is None
            assert case.reason in failure.get("message")
            assert f"reproduce: {case.reproduce}" in failure.get("message")
        elif case.outcome == "error":
            assert error is not None and failure is None
            assert "guest hung" in error.get("message")
        elif case.outcome == "skip":
            assert tc.find("skipped").get("message") == case.reason
        else:
            assert failure is None and error is None, case.id
        system_out = tc.find("system-out").text
        assert "hard LOCKUP on cpu 1" in system_out
        assert f"{case.id} says \\x1b[0mhi\\x00" in system_out
        assert ("FLAKE: failed 1 time(s) first: first try failed" in system_out) == \
            (case.outcome == "flake")


def test_write_outputs_writes_every_report(tmp_path):
    summary, out = run_dir(tmp_path)
    paths = runner.write_outputs(summary, out)
    assert set(paths) == {"results", "html", "ktap", "junit"}
    assert RunSummary.load(paths["results"]) == summary
    assert json.loads(paths["results"].read_text()) == summary.to_dict()
    assert paths["ktap"].read_text() == report.ktap(summary)
    ET.parse(paths["junit"])
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_importing_the_harness_installs_no_signal_handler():
    """Handlers come with the first guest (qemu.install_cleanup), not with
    an import: a program that only reads matrices keeps its own."""
    code = ("import signal, harness.cli, harness.runner, harness.matrix, harness.qemu; "
            "print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "True", res.stdout


def test_a_results_json_round_trips_through_the_records():
    """RunSummary.load then save gives the file back: no field is lost or
    made up (a captured run's results.json)."""
    doc = json.loads(SAMPLE.read_text())
    summary = RunSummary.load(SAMPLE)
    assert summary.to_dict() == doc
    assert {c.outcome for c in summary.cases} <= set(Outcome)
    assert summary.exit_status == (0 if all(c["outcome"] in ("pass", "flake")
                                            for c in doc["cases"]) else 1)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["cases"][0].update(outcome="passed"), "unknown outcome 'passed'"),
    (lambda d: d["cases"][0].pop("machine"), "case 0: missing or non-string 'machine'"),
    (lambda d: d["cases"][0].update(attempts={}), "attempts is not a list"),
    (lambda d: d["cases"][0]["attempts"][0].update(duration_s="2 s"), "is not a number"),
    (lambda d: d.update(meta=[]), "'meta' is not an object")])
def test_a_results_json_of_the_wrong_shape_is_one_error(tmp_path, edit, message):
    doc = json.loads(SAMPLE.read_text())
    edit(doc)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(SummaryError, match=message) as e:
        RunSummary.load(path)
    assert str(e.value).startswith(f"{path}: not a results.json of `harness run`")
    assert "\n" not in str(e.value)


def test_the_runner_in_process_returns_typed_records(built, detector, tmp_path):
    """runner.run on a real guest, in this process: a typed result whose
    summary is what it wrote, and no guest left behind."""
    cs = matrix.name_cases(matrix.expand_group(
        "test", {"detector": detector, "cpus": 1, "scenarios": ["boot", "idle"]}))
    result = runner.run(runner.RunRequest(tuple(cs), tmp_path, retries=0, progress=False),
                        built={detector: built})
    assert [r.id for r in result.records] == [c.id for c in cs]
    assert all(r.outcome is Outcome.PASS for r in result.records), result.failures()
    assert result.exit_status == 0 and result.counts[Outcome.PASS] == 2
    assert RunSummary.load(result.paths["results"]) == result.summary
    assert set(result.paths) == {"results", "html", "ktap", "junit"}
    # both cases on one guest, stopped at the end
    assert len({r.attempts[0].guest for r in result.records}) == 1
    assert not qemus_for(str(tmp_path))
