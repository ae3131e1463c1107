"""Do runs of the same matrix agree? Verdicts per case across results.json
files, for the back-to-back runs that tell flakes from real results.

A case disagrees when its outcome differs between runs, or when any run
needed a retry for it (a flake: its attempts disagreed within one run).
Cases not in every run are listed apart: different selections are not
disagreements.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.records import CaseRecord, Outcome, RunSummary


@dataclass
class Run:
    path: Path
    summary: RunSummary

    @property
    def meta(self) -> dict:
        return self.summary.meta

    @property
    def cases(self) -> list[CaseRecord]:
        return self.summary.cases

    @property
    def outcomes(self) -> dict[str, Outcome]:
        return {c.id: c.outcome for c in self.cases}

    @property
    def reasons(self) -> dict[str, str]:
        return {c.id: c.reason for c in self.cases}


def load_run(path: Path) -> Run:
    return Run(Path(path), RunSummary.load(path))


@dataclass
class Comparison:
    runs: list[Run]
    common: list[str]
    partial: list[str]
    disagree: list[str]

    @property
    def agree(self) -> bool:
        return not self.disagree


def compare(runs: list[Run]) -> Comparison:
    if len(runs) < 2:
        raise HarnessError("compare needs at least two results.json files")
    ids = [set(r.outcomes) for r in runs]
    common = sorted(set.intersection(*ids))
    partial = sorted(set.union(*ids) - set(common))
    disagree = [cid for cid in common
                if len({r.outcomes[cid] for r in runs}) > 1
                or any(r.outcomes[cid] == Outcome.FLAKE for r in runs)]
    return Comparison(runs, common, partial, disagree)


def render(c: Comparison) -> str:
    lines = []
    for i, r in enumerate(c.runs, 1):
        counts = r.summary.counts()
        wall = r.meta.get("wall_s")
        took = f"{wall / 60:.1f} min" if wall else "? min"
        lines.append(f"run {i}: {r.path} (started {r.meta.get('started', '?')}, {took}): "
                     + ", ".join(f"{n} {k}" for k, n in counts.items()))
    kernels = {json.dumps(r.meta.get("kernels"), sort_keys=True) for r in c.runs}
    if len(kernels) > 1:
        lines.append("note: the runs did not all test the same kernels (see each "
                     "results.json's meta.kernels)")
    lines.append(f"{len(c.common)} cases in every run; {len(c.partial)} only in some")
    if c.agree:
        lines.append("all verdicts agree, no flakes")
        return "\n".join(lines)
    lines.append(f"{len(c.disagree)} cases disagree:")
    for cid in c.disagree:
        verdicts = " ".join(r.outcomes[cid] for r in c.runs)
        lines.append(f"  {cid}: {verdicts}")
        for i, r in enumerate(c.runs, 1):
            if r.outcomes[cid] != Outcome.PASS:
                load = _host_loads(r, cid)
                lines.append(f"    run {i}: {r.reasons[cid][:200]}"
                             + (f" (host load {load})" if load else ""))
    return "\n".join(lines)


def _host_loads(run: Run, cid: str) -> str:
    """The host's 1-minute load average after each attempt of a case."""
    case = next(c for c in run.cases if c.id == cid)
    loads = [a.host_load for a in case.attempts if a.host_load is not None]
    return "/".join(f"{x:.1f}" for x in loads)
