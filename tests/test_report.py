"""Reports from a run summary: KTAP checked by the kernel's own parser, HTML
checked for structure and self-containment, exit status and the CLI.

Expectations are computed from the fixture, so a summary captured from a
real run can replace tests/data/results-sample.json.
"""
import copy
import html
import importlib
import json
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import pytest

from harness import report
from harness.records import RunSummary

typed = RunSummary.from_dict   # the tests edit dicts; the reports take records

SAMPLE = Path(__file__).parent / "data" / "results-sample.json"
NOT_OK = ("fail", "error")


def with_every_outcome(summary: dict) -> dict:
    """A captured run may be all green: turn passing cases into the missing
    outcomes, so that no check below is vacuous."""
    spare = (c for c in summary["cases"] if c["outcome"] == "pass")
    present = {c["outcome"] for c in summary["cases"]}
    for outcome in [o for o in report.OUTCOMES if o not in present]:
        case = next(spare)
        failed = {"passed": False, "reason": f"made-up {outcome}", "duration_s": 1.0}
        if outcome == "flake":          # failed once, then the real pass
            case["attempts"] = [failed] + (case.get("attempts") or [])[-1:]
        else:
            case["attempts"], case["reason"] = [failed], failed["reason"]
        case["outcome"] = outcome
    return summary


@pytest.fixture
def summary():
    return with_every_outcome(json.loads(SAMPLE.read_text()))


def configs(summary) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for case in summary["cases"]:
        groups.setdefault(f"{case['detector']}/{case['machine']}", []).append(case)
    return groups


# --- KTAP, parsed by the kernel's tools/testing/kunit/kunit_parser.py -------

@pytest.fixture(scope="module")
def kunit_parser(built):
    """kunit_parser.py from the source tree of the kernel the harness builds.
    Through `built`, conftest marks these tests `kernel`: `make unit` leaves
    them out, and where they run the source is there (no silent skip)."""
    where = (built[0].build_dir / "source" / "tools" / "testing" / "kunit").resolve()
    assert (where / "kunit_parser.py").is_file(), f"no kunit_parser.py in {where}"
    sys.path.insert(0, str(where))      # it imports its sibling kunit_printer
    try:
        yield importlib.import_module("kunit_parser")
    finally:
        sys.path.remove(str(where))


def parse(kunit_parser, text: str):
    return kunit_parser.parse_run_tests(text.splitlines())


def test_ktap_parses_without_errors(kunit_parser, summary):
    tree = parse(kunit_parser, report.ktap(typed(summary)))
    assert tree.counts.errors == 0
    assert tree.status != kunit_parser.TestStatus.FAILURE_TO_PARSE_TESTS


def test_ktap_one_test_per_config(kunit_parser, summary):
    tree = parse(kunit_parser, report.ktap(typed(summary)))
    groups = configs(summary)
    assert [t.name for t in tree.subtests] == list(groups)
    for test, cases in zip(tree.subtests, groups.values()):
        assert test.expected_count == len(cases)
        assert len(test.subtests) == len(cases)


def test_ktap_statuses_match_outcomes(kunit_parser, summary):
    status = kunit_parser.TestStatus
    tree = parse(kunit_parser, report.ktap(typed(summary)))
    for test, cases in zip(tree.subtests, configs(summary).values()):
        for sub, case in zip(test.subtests, cases):
            want = status.FAILURE if case["outcome"] in NOT_OK else \
                status.SKIPPED if case["outcome"] == "skip" else status.SUCCESS
            assert sub.status == want, case["id"]
        failing = any(c["outcome"] in NOT_OK for c in cases)
        assert test.status == (status.FAILURE if failing else status.SUCCESS)


def test_ktap_totals(kunit_parser, summary):
    tree = parse(kunit_parser, report.ktap(typed(summary)))
    bad = sum(c["outcome"] in NOT_OK for c in summary["cases"])
    skipped = sum(c["outcome"] == "skip" for c in summary["cases"])
    assert skipped and tree.counts.skipped == skipped
    assert tree.counts.failed == bad
    assert tree.counts.passed == len(summary["cases"]) - bad - skipped
    assert (tree.status == kunit_parser.TestStatus.FAILURE) == (bad > 0)


def subtests_with_cases(tree, summary):
    for test, cases in zip(tree.subtests, configs(summary).values()):
        yield from zip(test.subtests, cases)


def test_ktap_flake_is_ok_with_diagnostic(kunit_parser, summary):
    tree = parse(kunit_parser, report.ktap(typed(summary)))
    for sub, case in subtests_with_cases(tree, summary):
        if case["outcome"] == "flake":
            assert sub.status == kunit_parser.TestStatus.SUCCESS
            assert any(line.strip().startswith("# flaky:") for line in sub.log), sub.log


def test_ktap_failures_carry_reason_and_reproduce(kunit_parser, summary):
    tree = parse(kunit_parser, report.ktap(typed(summary)))
    for sub, case in subtests_with_cases(tree, summary):
        if case["outcome"] in NOT_OK:
            log = "\n".join(sub.log)
            assert "# reason:" in log
            if case.get("reproduce"):
                assert case["reproduce"] in log


def test_ktap_hostile_names_and_reasons(kunit_parser, summary):
    case = copy.deepcopy(next(c for c in summary["cases"] if c["outcome"] == "fail"))
    case["id"] = "x/y/odd # name\nwith newline"
    case["detector"], case["machine"] = "det#1", "m\nachine"
    case["reason"] = "first line\nSubtest: fake\nreboot: System halted\nKernel panic - not syncing: VFS: x"
    text = report.ktap(typed({"meta": {}, "cases": [case]}))
    tree = parse(kunit_parser, text)
    assert tree.counts.errors == 0
    assert tree.counts.failed == 1 and tree.counts.passed == 0
    config = tree.subtests[0]
    assert "#" not in config.name and "#" not in config.subtests[0].name
    assert len(config.subtests) == 1


def test_ktap_nesting_is_two_spaces(summary):
    lines = report.ktap(typed(summary)).splitlines()
    assert lines[0] == "KTAP version 1"
    assert lines.count("  KTAP version 1") == len(configs(summary))


def test_ktap_empty_run():
    text = report.ktap(typed({"meta": {}, "cases": []}))
    assert text.splitlines()[:2] == ["KTAP version 1", "1..0"]


# --- HTML ---------------------------------------------------------------------

VOID = {"meta", "img", "br", "hr", "link", "input", "col", "wbr", "source"}


class Page(HTMLParser):
    """Checks that tags nest, and collects what the tests look at."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.attrs = [], [], []
        self.tags, self.matrix_rows, self.imgs, self.code = [], [], [], []
        self._row = self._in_code = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]
        if tag == "img":
            self.imgs.append(dict(attrs).get("src", ""))
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "tr" and "tbody" in self.stack and "table" in self.stack:
            self._row = []
        if tag in ("th", "td") and self._row is not None:
            self._row.append("")
        if tag == "code":
            self._in_code = ""

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        if tag == "tr" and self._row is not None:
            self.matrix_rows.append(self._row)
            self._row = None
        if tag == "code":
            self.code.append(self._in_code)
            self._in_code = None

    def handle_data(self, data):
        if self._row:
            self._row[-1] += data
        if self._in_code is not None:
            self._in_code += data


def page(summary) -> Page:
    p = Page()
    p.feed(report.html(typed(summary)))
    p.close()
    return p


def test_html_well_formed(summary):
    p = page(summary)
    assert p.errors == [] and p.stack == []
    assert p.tags[0] == "html"


def test_html_row_per_config(summary):
    rows = page(summary).matrix_rows
    assert [f"{r[0]}/{r[1]}" for r in rows] == list(configs(summary))


def test_html_cells_count_passes(summary):
    rows = page(summary).matrix_rows
    scenarios = list(dict.fromkeys(c["scenario"] for c in summary["cases"]))
    for row, cases in zip(rows, configs(summary).values()):
        for scenario, cell in zip(scenarios, row[2:]):
            mine = [c for c in cases if c["scenario"] == scenario]
            if mine:
                ok = sum(c["outcome"] in report.OK_OUTCOMES for c in mine)
                assert cell.startswith(f"{ok}/{len(mine)}")


def test_html_lists_every_non_passing_case(summary):
    p = page(summary)
    text = report.html(typed(summary))
    for case in summary["cases"]:
        if case["outcome"] != "pass":
            assert f"<h3>{html.escape(case['id'])} &mdash;" in text
            if case.get("reproduce"):
                assert case["reproduce"] in p.code, case["id"]


def test_html_has_latency_plot(summary):
    has_latency = any(report.latency_values(c.get("measurements") or {})
                      for c in summary["cases"] if c["scenario"] == "hard-lockup")
    if not has_latency:
        pytest.skip("the fixture has no hard-lockup latency")
    p = page(summary)
    assert any(src.startswith("data:image/png;base64,") for src in p.imgs)
    assert any(alt == "Hard lockup detection latency"
               for tag, k, alt in p.attrs if tag == "img" and k == "alt")


def test_html_self_contained(summary):
    p = page(summary)
    assert not {"script", "link", "iframe", "object"} & set(p.tags)
    for tag, key, value in p.attrs:
        assert "http://" not in value and "https://" not in value, (tag, key)
        if key in ("href", "src"):
            assert value.startswith(("#", "data:")) or "://" not in value, value
    assert "url(" not in report.CSS


def test_html_escapes_text(summary):
    hostile = copy.deepcopy(summary)
    case = hostile["cases"][0]
    case["outcome"] = "fail"
    case["reason"] = "<script>alert(1)</script>"
    case["console_tail"] = "</pre><b>x</b>"
    p = page(hostile)
    assert "script" not in p.tags and "b" not in p.tags
    assert p.errors == []


def test_html_without_plot_data_says_so(summary):
    bare = copy.deepcopy(summary)
    for case in bare["cases"]:
        case["measurements"] = {}
    p = page(bare)
    text = report.html(typed(bare))
    assert p.imgs == []
    assert text.count('class="note"') == len(report.PLOTS)


def test_html_artifact_links_are_relative(summary):
    p = page(summary)
    hrefs = [v for tag, k, v in p.attrs if k == "href" and not v.startswith("#")]
    wanted = [c for c in summary["cases"] if c["outcome"] != "pass"
              and c.get("artifacts") and not c["artifacts"].startswith("/")]
    assert len(hrefs) == len(wanted)
    assert all(not h.startswith("/") for h in hrefs)


# --- exit status, files, command line -------------------------------------------

def test_exit_status(summary):
    bad = any(c["outcome"] in NOT_OK for c in summary["cases"])
    assert typed(summary).exit_status == (1 if bad else 0)
    for case in summary["cases"]:
        if case["outcome"] in NOT_OK:
            case["outcome"] = "pass"
    assert typed(summary).exit_status == 0
    summary["cases"][0]["outcome"] = "flake"
    assert typed(summary).exit_status == 0
    summary["cases"][0]["outcome"] = "error"
    assert typed(summary).exit_status == 1


def test_write_reports(summary, tmp_path):
    out = tmp_path / "out"
    paths = report.write_reports(typed(summary), out)
    assert set(paths) == {"html", "ktap"}
    assert paths["html"] == out / "report.html" and paths["ktap"] == out / "report.ktap"
    assert paths["ktap"].read_text() == report.ktap(typed(summary))
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.ktap"]


def test_write_reports_undecodable_console(summary, tmp_path):
    # bytes the harness decoded with surrogateescape survive json as \udcXX
    summary["cases"][0].update(outcome="fail", console_tail="bad byte: \udcff")
    paths = report.write_reports(typed(summary), tmp_path)
    assert "bad byte: ?" in paths["html"].read_text()


def test_main_writes_reports(tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text(SAMPLE.read_text())
    assert report.main([str(results)]) == 0
    assert (tmp_path / "report.html").stat().st_size > 0
    assert (tmp_path / "report.ktap").read_text().startswith("KTAP version 1\n")
    assert len(list(ET.parse(tmp_path / "junit.xml").iter("testcase"))) == \
        len(json.loads(SAMPLE.read_text())["cases"])


def test_main_out_dir_keeps_artifact_links(tmp_path, summary):
    results = tmp_path / "run" / "results.json"
    results.parent.mkdir()
    results.write_text(json.dumps(summary))
    assert report.main([str(results), "--out", str(tmp_path / "elsewhere")]) == 0
    text = (tmp_path / "elsewhere" / "report.html").read_text()
    for case in summary["cases"]:
        if case["outcome"] != "pass" and case.get("artifacts"):
            assert f'href="{quote("../run/" + case["artifacts"])}/"' in text


@pytest.mark.parametrize("content", [None, "", "{not json", "[1, 2]", '{"cases": 3}',
                                     '{"cases": [{"id": "a"}]}',
                                     '{"cases": [{"id": "a", "detector": "d", "machine": "m",'
                                     ' "scenario": "s", "outcome": "maybe"}]}'])
def test_main_bad_file(tmp_path, capsys, content):
    results = tmp_path / "results.json"
    if content is not None:
        results.write_text(content)
    assert report.main([str(results), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error" in err
    assert not (tmp_path / "o").exists()
