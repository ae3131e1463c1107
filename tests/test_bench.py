"""`harness bench --previous`: two bench.json side by side with ratios, on
two real bench.json files of this machine (2 cores, TCG): tests/data/
bench-a.json is `harness bench --cpus 1,2 --boots 1 --jobs 1
--smoke-results` of a smoke run at --jobs 1, bench-b.json the same with a
smoke run at --jobs 2 and --previous bench-a.json."""
import json
import subprocess
import sys

import pytest

from harness import bench
from harness.paths import REPO

DATA = REPO / "tests" / "data"
OLD, NEW = DATA / "bench-a.json", DATA / "bench-b.json"


def rows(text: str) -> dict[str, list[str]]:
    """metric -> the rest of its line, split on blanks."""
    out = {}
    for line in text.splitlines()[3:]:
        name, *rest = line.split()
        out[name] = rest
    return out


def test_every_number_of_both_files_is_shown_with_its_ratio():
    old, new = bench.load_bench(OLD), bench.load_bench(NEW)
    text = bench.side_by_side(old, new, str(OLD), str(NEW))
    lines = text.splitlines()
    assert lines[0] == f"old: {OLD} (commit {old['meta']['commit']}, {old['meta']['date']})"
    assert lines[1] == f"new: {NEW} (commit {new['meta']['commit']}, {new['meta']['date']})"
    table = rows(text)
    # The numbers the issue asks for are all there, read from the files.
    pairs = {
        "tiers.smoke.cases_per_min": (old["tiers"]["smoke"]["cases_per_min"],
                                      new["tiers"]["smoke"]["cases_per_min"]),
        "boot.by_cpus.2.to_agent_s": (old["boot"]["by_cpus"]["2"]["to_agent_s"]["median"],
                                      new["boot"]["by_cpus"]["2"]["to_agent_s"]["median"]),
        "build.kernel_hpet_s": (old["build"]["kernel_hpet_s"], new["build"]["kernel_hpet_s"]),
        "tiers.smoke.latency.hpet.hard_lockup_s": (
            old["tiers"]["smoke"]["latency"]["hpet"]["hard_lockup_s"]["median"],
            new["tiers"]["smoke"]["latency"]["hpet"]["hard_lockup_s"]["median"]),
        "tiers.smoke.latency.buddy.hard_lockup_s": (
            old["tiers"]["smoke"]["latency"]["buddy"]["hard_lockup_s"]["median"],
            new["tiers"]["smoke"]["latency"]["buddy"]["hard_lockup_s"]["median"]),
        "matrix.jobs1.cases_per_min": (old["matrix"][0]["cases_per_min"],
                                       new["matrix"][0]["cases_per_min"]),
    }
    for name, (a, b) in pairs.items():
        assert table[name][:3] == [f"{a:g}", f"{b:g}", f"{b / a:.2f}"], name
    # Every number of both files has a row, and nothing else does.
    assert set(table) == set(bench.flatten(old)) | set(bench.flatten(new))


def test_a_regression_is_marked_worse_and_an_improvement_better():
    old = bench.load_bench(OLD)
    slower = json.loads(json.dumps(old))
    slower["tiers"]["smoke"]["cases_per_min"] = round(
        old["tiers"]["smoke"]["cases_per_min"] * 0.8, 2)
    slower["boot"]["by_cpus"]["2"]["to_agent_s"]["median"] = round(
        old["boot"]["by_cpus"]["2"]["to_agent_s"]["median"] * 0.5, 2)
    table = rows(bench.side_by_side(old, slower))
    assert table["tiers.smoke.cases_per_min"][2:] == ["0.80", "worse"]
    assert table["boot.by_cpus.2.to_agent_s"][2:] == ["0.50", "better"]
    # Within 10 %, and numbers with no good direction: no word.
    assert table["tiers.smoke.cases"][2:] == ["1.00"]


def test_fewer_cases_passing_is_worse_by_any_amount():
    old, new = bench.load_bench(OLD), bench.load_bench(NEW)
    a = old["tiers"]["smoke"]["passed"]
    b = new["tiers"]["smoke"]["passed"]
    assert b < a > 0.9 * a < b          # the files: a drop of less than 10 %
    assert rows(bench.side_by_side(old, new))["tiers.smoke.passed"][3] == "worse"
    # And the tier's parallelism is shown, to explain its cases per minute.
    jobs = rows(bench.side_by_side(old, new))["tiers.smoke.jobs"]
    assert jobs[:2] == [str(old["tiers"]["smoke"]["jobs"]), str(new["tiers"]["smoke"]["jobs"])]


def test_a_metric_only_one_file_has_shows_a_dash():
    old, new = bench.load_bench(OLD), bench.load_bench(NEW)
    del old["tiers"]["smoke"]       # as from a bench.json before the tiers
    table = rows(bench.side_by_side(old, new))
    assert table["tiers.smoke.cases_per_min"][0] == "-"
    assert table["tiers.smoke.cases_per_min"][2] == "-"


@pytest.mark.parametrize("content, needle", [
    (None, "not a bench.json of `harness bench`"),
    ('{"meta": {}, "cases": []}', "no 'boot' or 'matrix'"),
    ("{", "not a bench.json of `harness bench`"),
])
def test_a_previous_that_is_no_bench_json_is_bad_input_before_any_work(tmp_path, content,
                                                                        needle):
    prev = tmp_path / "prev.json"
    if content is not None:
        prev.write_text(content)
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "harness", "bench", "--previous", str(prev),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"harness: error: {prev}: ")
    assert needle in lines[0]
    assert not out.exists()


def test_bench_json_is_read_and_written_through_one_typed_record(tmp_path):
    """BenchReport.load/save: both real files come back as they were, typed
    on the way (a statistics object is Stats, a vCPU count an int)."""
    for path in (OLD, NEW):
        report = bench.BenchReport.load(path)
        assert isinstance(report.boot.by_cpus[2].to_agent_s, bench.Stats)
        assert isinstance(report.tiers["smoke"], bench.TierRow)
        assert report.to_dict() == json.loads(path.read_text())
        again = bench.BenchReport.load(report.save(tmp_path / "bench.json"))
        assert again == report


def test_a_statistics_object_without_its_median_is_not_a_bench_json(tmp_path):
    doc = json.loads(OLD.read_text())
    del doc["matrix"][0]["hard_lockup_latency_s"]["median"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(bench.HarnessError, match="not a bench.json of `harness bench`"):
        bench.BenchReport.load(bad)
