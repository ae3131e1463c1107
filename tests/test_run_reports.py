"""`python -m harness run` end to end on real guests: a passing case and the
deliberately wrong canary (it expects the report on the wrong CPU) must show
up in every report, the failure with its reason and reproduce command, and
the reproduce command must run that one case again."""
import json
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from harness.paths import REPO


def run(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "harness", "run", "--no-progress", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def canary_run(tmp_path_factory, built):
    out = tmp_path_factory.mktemp("canary")
    res = run("--scenario", "hard-lockup@1,canary-wrong-cpu@0", "--cpus", "2",
              "--retries", "0", "--jobs", "1", "--out", str(out))
    return res, out


def test_exit_status_and_ktap_on_stdout(canary_run):
    res, _ = canary_run
    assert res.returncode == 1, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "KTAP version 1"
    assert any(line.strip() == "ok 1 hard-lockup@cpu1" for line in lines), res.stdout
    assert any(line.strip() == "not ok 2 canary-wrong-cpu@cpu0" for line in lines)
    assert "expected a hard_lockup report on cpu 1" in res.stdout
    assert "# reproduce: python -m harness run" in res.stdout


def test_failure_is_readable_on_stderr(canary_run):
    res, out = canary_run
    assert "FAIL hpet/2cpu-noiommu/canary-wrong-cpu@cpu0: expected a hard_lockup " \
        "report on cpu 1" in res.stderr
    assert "reproduce: python -m harness run --detector hpet --cpus 2 --iommu off " \
        "--scenario canary-wrong-cpu@0" in res.stderr


def test_results_and_artifacts(canary_run):
    _, out = canary_run
    summary = json.loads((out / "results.json").read_text())
    outcome = {c["id"]: c["outcome"] for c in summary["cases"]}
    assert outcome == {"hpet/2cpu-noiommu/hard-lockup@cpu1": "pass",
                       "hpet/2cpu-noiommu/canary-wrong-cpu@cpu0": "fail"}
    for c in summary["cases"]:
        d = out / c["artifacts"]
        assert (d / "reproduce.txt").read_text().strip() == c["reproduce"]
        assert "lockup_inject" in (d / "console-attempt1.log").read_text()
        assert json.loads((d / "events-attempt1.json").read_text())
        guest = (d / c["attempts"][0]["guest"]).resolve()
        for name in ("console.log", "qemu-cmdline.txt", "kernel-cmdline.txt",
                     "agent-transcript.txt"):
            assert (guest / name).is_file(), name


def test_junit_has_the_failure_and_console_tails(canary_run):
    _, out = canary_run
    cases = {f'{tc.get("classname")}/{tc.get("name")}': tc
             for tc in ET.parse(out / "junit.xml").iter("testcase")}
    bad = cases["hpet/2cpu-noiommu/canary-wrong-cpu@cpu0"]
    failure = bad.find("failure")
    assert failure is not None and "reproduce: python -m harness run" in failure.get("message")
    good = cases["hpet/2cpu-noiommu/hard-lockup@cpu1"]
    assert good.find("failure") is None
    # The case's console events, then its console tail.
    out_text = good.find("system-out").text
    assert re.search(r"\n\s+[\d.]+\s+hard_lockup\s+1\s", out_text), out_text[:2000]
    assert "--- console tail ---" in out_text


def test_html_report_shows_the_failure(canary_run):
    _, out = canary_run
    page = (out / "report.html").read_text()
    assert "canary-wrong-cpu" in page and "python -m harness run --detector hpet" in page


def test_reproduce_command_runs_that_one_case(canary_run, tmp_path):
    _, out = canary_run
    summary = json.loads((out / "results.json").read_text())
    bad = next(c for c in summary["cases"] if c["outcome"] == "fail")
    argv = shlex.split(bad["reproduce"])[4:]      # after "python -m harness run"
    res = run(*argv, "--retries", "0", "--out", str(tmp_path))
    again = json.loads((tmp_path / "results.json").read_text())["cases"]
    assert [c["id"] for c in again] == [bad["id"]] and again[0]["outcome"] == "fail"
    assert res.returncode == 1
