"""What a run records, typed: each attempt of a case, each case, the run.

The runner makes them; results.json is RunSummary.save, and everything that
reads a results.json (reports, compare, the time estimate) reads it with
RunSummary.load, which is the one place a file's shape is checked.
"""
import json
import os
import tempfile
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from harness.errors import HarnessError


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    FLAKE = "flake"          # failed, then passed on a retry: not a failure
    ERROR = "error"          # the guest or the harness broke: no verdict
    SKIP = "skip"            # the QEMU that ran cannot give the case its machine

    @property
    def ok(self) -> bool:
        """Not a failure: a flake passed on a retry, a skip is named with why."""
        return self in (Outcome.PASS, Outcome.FLAKE, Outcome.SKIP)


class SummaryError(HarnessError):
    """A results.json that is not one: one line saying where and why."""


@dataclass
class Attempt:
    """One try of a case on a guest."""
    passed: bool
    reason: str
    duration_s: float = 0.0
    host_load: float | None = None       # the host's 1-min load after it (TCG feels it)
    guest: str | None = None             # the guest's directory, from the case's
    error: bool = False                  # a GuestError or harness error, not a verdict
    skipped: bool = False                # not run: the QEMU lacks what it needs
    console_tail: str = ""               # kept on the case, not saved per attempt

    def to_dict(self) -> dict:
        d = {"passed": self.passed, "reason": self.reason, "duration_s": self.duration_s}
        if self.host_load is not None:
            d["host_load"] = self.host_load
        if self.guest is not None:
            d["guest"] = self.guest
        if self.error:
            d["error"] = True
        if self.skipped:
            d["skipped"] = True
        return d

    @classmethod
    def from_dict(cls, d, where: str) -> "Attempt":
        if not isinstance(d, dict):
            raise SummaryError(f"{where} is not an object")
        return cls(passed=bool(d.get("passed")), reason=str(d.get("reason") or ""),
                   duration_s=_number(d.get("duration_s"), f"{where}: duration_s") or 0.0,
                   host_load=_number(d.get("host_load"), f"{where}: host_load"),
                   guest=d.get("guest") if isinstance(d.get("guest"), str) else None,
                   error=bool(d.get("error")), skipped=bool(d.get("skipped")))


def _number(value, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SummaryError(f"{where}: {value!r} is not a number")
    return value


REQUIRED = ("id", "detector", "machine", "scenario", "outcome")


@dataclass
class CaseRecord:
    """A case as it ran: what it was, its verdict, its attempts and what it
    measured; `artifacts` is its directory, relative to the run's output."""
    id: str
    detector: str
    machine: str
    scenario: str
    outcome: Outcome
    reason: str = ""
    cpu: int | None = None
    spec: dict = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    duration_s: float = 0.0
    measurements: dict = field(default_factory=dict)
    reproduce: str = ""
    accel: str = ""
    kernel: str = ""
    qemu: str = ""                       # the QEMU binary it ran on (describe_qemu)
    artifacts: str = ""
    console_tail: str = ""               # the last one an attempt left, if it failed

    @property
    def config(self) -> str:
        """Its detector and machine: the reports' row, KTAP's test."""
        return f"{self.detector}/{self.machine}"

    @property
    def label(self) -> str:
        """Its name within its config: the id minus the config prefix."""
        prefix = self.config + "/"
        if self.id.startswith(prefix):
            return self.id[len(prefix):]
        return self.scenario + (f"@cpu{self.cpu}" if self.cpu is not None else "")

    def to_dict(self) -> dict:
        d = {"id": self.id, "detector": self.detector, "spec": self.spec,
             "scenario": self.scenario, "cpu": self.cpu, "machine": self.machine,
             "outcome": str(self.outcome), "reason": self.reason,
             "attempts": [a.to_dict() for a in self.attempts],
             "duration_s": self.duration_s, "measurements": self.measurements,
             "reproduce": self.reproduce, "accel": self.accel, "kernel": self.kernel}
        if self.qemu:
            d["qemu"] = self.qemu
        d["artifacts"] = self.artifacts
        if self.console_tail:
            d["console_tail"] = self.console_tail
        return d

    @classmethod
    def from_dict(cls, d, where: str) -> "CaseRecord":
        if not isinstance(d, dict):
            raise SummaryError(f"{where} is not an object")
        for key in REQUIRED:
            if not isinstance(d.get(key), str):
                raise SummaryError(f"{where}: missing or non-string {key!r}")
        try:
            outcome = Outcome(d["outcome"])
        except ValueError:
            raise SummaryError(f"{where} ({d['id']}): unknown outcome "
                               f"{d['outcome']!r}") from None
        attempts = d.get("attempts")
        attempts = [] if attempts is None else attempts
        if not isinstance(attempts, list):
            raise SummaryError(f"{where} ({d['id']}): attempts is not a list")
        cpu = d.get("cpu")
        for key in ("spec", "measurements"):
            if not isinstance(d.get(key, {}), dict):
                raise SummaryError(f"{where} ({d['id']}): {key} is not an object")
        return cls(id=d["id"], detector=d["detector"], machine=d["machine"],
                   scenario=d["scenario"], outcome=outcome,
                   reason=str(d.get("reason") or ""),
                   cpu=cpu if isinstance(cpu, int) and not isinstance(cpu, bool) else None,
                   spec=d.get("spec") or {},
                   attempts=[Attempt.from_dict(a, f"{where} ({d['id']}) attempt {i}")
                             for i, a in enumerate(attempts, 1)],
                   duration_s=_number(d.get("duration_s"), f"{where}: duration_s") or 0.0,
                   measurements=d.get("measurements") or {},
                   reproduce=str(d.get("reproduce") or ""), accel=str(d.get("accel") or ""),
                   kernel=str(d.get("kernel") or ""), qemu=str(d.get("qemu") or ""),
                   artifacts=str(d.get("artifacts") or ""),
                   console_tail=str(d.get("console_tail") or ""))


@dataclass
class RunSummary:
    """A run: its facts (`meta`: started, wall_s, accel, host_cpus, jobs,
    matrix, command, kernels) and its cases, in run order."""
    meta: dict
    cases: list[CaseRecord]

    def counts(self) -> dict[Outcome, int]:
        counts = dict.fromkeys(Outcome, 0)
        for case in self.cases:
            counts[case.outcome] += 1
        return counts

    @property
    def ok(self) -> bool:
        """Every case passed, at once or on a retry."""
        return all(c.outcome.ok for c in self.cases)

    @property
    def exit_status(self) -> int:
        return 0 if self.ok else 1

    def to_dict(self) -> dict:
        return {"meta": self.meta, "cases": [c.to_dict() for c in self.cases]}

    def to_json(self) -> str:
        # measurements may hold what JSON lacks (a tuple is fine, a Path not)
        return json.dumps(self.to_dict(), indent=1, default=str)

    @classmethod
    def from_dict(cls, d) -> "RunSummary":
        if not isinstance(d, dict):
            kind = "an array" if isinstance(d, list) else type(d).__name__
            raise SummaryError(f"summary is {kind}, not an object with 'meta' and 'cases'")
        meta = d.get("meta", {})
        if not isinstance(meta, dict):
            raise SummaryError("'meta' is not an object")
        cases = d.get("cases")
        if not isinstance(cases, list):
            raise SummaryError("no 'cases' list")
        return cls(meta, [CaseRecord.from_dict(c, f"case {i}") for i, c in enumerate(cases)])

    @classmethod
    def load(cls, path: Path) -> "RunSummary":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise SummaryError(f"{path}: not a results.json of `harness run` "
                               f"(cannot read it: {e.strerror or e})") from None
        try:
            doc = json.loads(text)
        except ValueError as e:          # JSONDecodeError and bad UTF-8 alike
            raise SummaryError(f"{path}: not a results.json of `harness run` "
                               f"(not valid JSON: {e})") from None
        try:
            return cls.from_dict(doc)
        except SummaryError as e:
            raise SummaryError(f"{path}: not a results.json of `harness run` ({e})") from None

    def save(self, path: Path) -> Path:
        write_atomic(Path(path), self.to_json())
        return Path(path)


def write_atomic(path: Path, text: str) -> None:
    """Readers (a browser, CI upload, compare) never see a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # a console tail may carry undecodable bytes as lone surrogates
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
            f.write(text)
        os.chmod(tmp, 0o644)            # mkstemp makes 0600; reports are for sharing
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
