"""`harness compare` on results.json written by a real run
(tests/data/results-sample.json), and copies of it with one verdict
changed the way a flaky case would change it."""
import json
import subprocess
import sys

import pytest

from harness import compare
from harness.errors import HarnessError
from harness.paths import REPO

SAMPLE = REPO / "tests" / "data" / "results-sample.json"


def _variant(tmp_path, name, edit):
    doc = json.loads(SAMPLE.read_text())
    edit(doc["cases"])
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def _run(*paths):
    return subprocess.run([sys.executable, "-m", "harness", "compare", *map(str, paths)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_identical_runs_agree(tmp_path):
    res = _run(SAMPLE, _variant(tmp_path, "b.json", lambda cases: None))
    assert res.returncode == 0, res.stdout
    n = len(json.loads(SAMPLE.read_text())["cases"])
    assert f"{n} cases in every run; 0 only in some" in res.stdout
    assert "all verdicts agree, no flakes" in res.stdout


def test_a_changed_verdict_is_named(tmp_path):
    def flip(cases):
        case = next(c for c in cases if c["outcome"] == "pass")
        case["outcome"], case["reason"] = "fail", "no report within 4.0 s"
        case["attempts"][-1]["host_load"] = 7.46
        flip.id = case["id"]
    other = _variant(tmp_path, "b.json", flip)
    res = _run(SAMPLE, SAMPLE, other)
    assert res.returncode == 1
    assert f"  {flip.id}: pass pass fail" in res.stdout
    assert "run 3: no report within 4.0 s (host load 7.5)" in res.stdout
    assert "not all test the same kernels" not in res.stdout


def test_runs_of_different_kernels_are_pointed_out(tmp_path):
    doc = json.loads(SAMPLE.read_text())
    doc["meta"]["kernels"]["hpet"] = "6.12.117 (0000000000000000)"
    other = tmp_path / "b.json"
    other.write_text(json.dumps(doc))
    res = _run(SAMPLE, other)
    assert res.returncode == 0, res.stdout
    assert "note: the runs did not all test the same kernels" in res.stdout


def test_a_flake_in_one_run_is_a_disagreement(tmp_path):
    def flake(cases):
        case = next(c for c in cases if c["outcome"] == "pass")
        case["outcome"] = "flake"
        flake.id = case["id"]
    result = compare.compare([compare.load_run(SAMPLE),
                              compare.load_run(_variant(tmp_path, "b.json", flake))])
    assert result.disagree == [flake.id]


def test_cases_in_only_some_runs_are_not_disagreements(tmp_path):
    fewer = _variant(tmp_path, "b.json", lambda cases: cases.pop())
    result = compare.compare([compare.load_run(SAMPLE), compare.load_run(fewer)])
    assert result.agree and len(result.partial) == 1


def test_bad_input(tmp_path):
    with pytest.raises(HarnessError, match="at least two"):
        compare.compare([compare.load_run(SAMPLE)])
    junk = tmp_path / "junk.json"
    junk.write_text("[1, 2]")
    res = _run(SAMPLE, junk)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"harness: error: {junk}: not a results.json of `harness run` "
        "(summary is an array, not an object with 'meta' and 'cases')"]
