"""Benchmarks, not tests: boot-to-agent time per vCPU count, the wall time,
cases per minute and detection latency of a small matrix and of the test
tiers, cold build times from the build caches' stamps. Numbers are printed
and saved (bench.json), never asserted; given the previous bench.json they
are printed side by side with their ratios, so a regression shows as a
number.

Also the cost model behind the time estimate `harness run` prints before a
run starts (`estimate`).
"""
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from harness import accel as accel_mod
from harness import expectations, kbuild
from harness.errors import HarnessError
from harness.machine import MachineSpec
from harness.paths import REPO, cache_dir
from harness.qemu import Guest, die_with_parent
from harness.records import Attempt, CaseRecord, Outcome, RunSummary, write_atomic

BENCH_MATRIX = REPO / "matrix" / "bench.toml"
SMOKE_MATRIX = REPO / "matrix" / "smoke.toml"
NIGHTLY_MATRIX = REPO / "matrix" / "nightly.toml"

# Scenario families whose latency_s is a hard / a soft lockup report's.
HARD_FAMILIES = ("hard-lockup", "hard-lockup-test_lockup", "lkdtm-hardlockup")
SOFT_FAMILIES = ("soft-lockup", "soft-lockup-test_lockup", "lkdtm-softlockup",
                 "lkdtm-spinlockup")


# --- bench.json, typed: one reader (BenchReport.load) and one writer (save) --

@dataclass(frozen=True)
class Stats:
    """n, median, min and max of some seconds; {} in JSON when there were none."""
    n: int
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> "Stats | None":
        if not values:
            return None
        return cls(len(values), round(statistics.median(values), 2),
                   round(min(values), 2), round(max(values), 2))

    @staticmethod
    def to_json(stats: "Stats | None") -> dict:
        return dataclasses.asdict(stats) if stats else {}

    @classmethod
    def from_json(cls, d, where: str) -> "Stats | None":
        if d in (None, {}):
            return None
        if not isinstance(d, dict) or set(d) != {"n", "median", "min", "max"}:
            raise HarnessError(f"{where}: not n, median, min and max: {d!r}")
        return cls(**d)


def _stats_map(d: dict, where: str) -> dict:
    return {k: Stats.from_json(v, f"{where}.{k}") for k, v in d.items()}


@dataclass
class BootRow:
    """Seconds from QEMU start to the agent, to a settled clocksource, and
    the guest's own seconds to /init, over the boots of one vCPU count."""
    to_agent_s: Stats | None
    to_settled_s: Stats | None
    guest_to_init_s: Stats | None

    def to_dict(self) -> dict:
        return {f.name: Stats.to_json(getattr(self, f.name))
                for f in dataclasses.fields(self)}


@dataclass
class BootTimes:
    accel: str
    by_cpus: dict[int, BootRow]

    def to_dict(self) -> dict:
        # str keys, as JSON has them (and as a loaded bench.json gives them)
        return {"accel": self.accel,
                "by_cpus": {str(c): r.to_dict() for c, r in self.by_cpus.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "BootTimes":
        return cls(d.get("accel"), {int(c): BootRow(**_stats_map(r, f"boot.by_cpus.{c}"))
                                    for c, r in d.get("by_cpus", {}).items()})


@dataclass
class MatrixRow:
    """The bench matrix run at one jobs level."""
    jobs: int
    cases: int
    wall_s: float
    cases_per_min: float
    passed: int
    hard_lockup_latency_s: Stats | None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hard_lockup_latency_s"] = Stats.to_json(self.hard_lockup_latency_s)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MatrixRow":
        return cls(**{**d, "hard_lockup_latency_s": Stats.from_json(
            d.get("hard_lockup_latency_s"), "matrix.hard_lockup_latency_s")})


@dataclass
class TierRow:
    """One tier's run (smoke, nightly), from its results.json."""
    source: str
    matrix: str | None
    jobs: int | None
    accel: str | None
    cases: int
    passed: int
    wall_s: float
    cases_per_min: float | None
    latency: dict[str, dict[str, Stats | None]]    # detector -> kind -> seconds

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["latency"] = {det: {k: Stats.to_json(v) for k, v in kinds.items()}
                        for det, kinds in self.latency.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TierRow":
        return cls(**{**d, "latency": {det: _stats_map(kinds, f"latency.{det}")
                                       for det, kinds in d.get("latency", {}).items()}})


@dataclass
class QemuRow:
    """Boot times and the bench matrix on one QEMU binary."""
    binary: str
    version: str
    describe: str
    boot: BootTimes
    matrix: list[MatrixRow]

    def to_dict(self) -> dict:
        return {"binary": self.binary, "version": self.version, "describe": self.describe,
                "boot": self.boot.to_dict(), "matrix": [m.to_dict() for m in self.matrix]}

    @classmethod
    def from_dict(cls, d: dict) -> "QemuRow":
        return cls(d["binary"], d["version"], d["describe"], BootTimes.from_dict(d["boot"]),
                   [MatrixRow.from_dict(m) for m in d["matrix"]])


@dataclass
class BenchReport:
    """bench.json: when and where (meta), cold build seconds, the tiers'
    runs, and per QEMU binary the boots and the bench matrix (the default
    QEMU's are also `boot` and `matrix`)."""
    meta: dict
    detector: str | None = None
    build: dict = field(default_factory=dict)
    tiers: dict[str, TierRow] = field(default_factory=dict)
    qemu: dict[str, QemuRow] = field(default_factory=dict)
    boot: BootTimes | None = None
    matrix: list[MatrixRow] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = {"meta": self.meta, "detector": self.detector, "build": self.build,
             "tiers": {k: t.to_dict() for k, t in self.tiers.items()}}
        if self.qemu:
            d["qemu"] = {k: q.to_dict() for k, q in self.qemu.items()}
        if self.boot is not None:
            d["boot"] = self.boot.to_dict()
        d["matrix"] = [m.to_dict() for m in self.matrix]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d) -> "BenchReport":
        if not isinstance(d, dict) or not ({"boot", "matrix"} & set(d)):
            raise HarnessError("no 'boot' or 'matrix'")
        try:
            return cls(meta=d.get("meta") or {}, detector=d.get("detector"),
                       build=d.get("build") or {},
                       tiers={k: TierRow.from_dict(t) for k, t in d.get("tiers", {}).items()},
                       qemu={k: QemuRow.from_dict(q) for k, q in d.get("qemu", {}).items()},
                       boot=BootTimes.from_dict(d["boot"]) if d.get("boot") else None,
                       matrix=[MatrixRow.from_dict(m) for m in d.get("matrix", [])])
        except (TypeError, KeyError, AttributeError, ValueError) as e:
            raise HarnessError(f"a part is not as `harness bench` writes it: {e!r}") from None

    @classmethod
    def load(cls, path: Path) -> "BenchReport":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, HarnessError) as e:
            raise HarnessError(f"{path}: not a bench.json of `harness bench` ({e})") from None

    def save(self, path: Path) -> Path:
        write_atomic(Path(path), self.to_json())
        return Path(path)


def boot_times(detector: str, cpu_counts: list[int], boots: int, out: Path,
               kernel, initrd, qemu: str | None = None,
               accel: str | None = None) -> BootTimes:
    """Host seconds from QEMU start to the agent's banner, and to a settled
    clocksource; guest seconds to /init from the kernel's timestamps.
    qemu: the binary (default: qemu.default_qemu()); accel: forced, or
    probed."""
    accel = accel_mod.choose_accel(kernel.bzimage, initrd, accel)
    rows = {}
    for cpus in cpu_counts:
        spec = MachineSpec(cpus=cpus, **expectations.machine_defaults(detector))
        agent, settled, init = [], [], []
        for i in range(boots):
            with Guest(spec, kernel.bzimage, initrd, out / f"boot-{cpus}cpu-{i}", accel,
                       qemu=qemu) as g:
                agent.append(g.wait_booted())
                settled.append(agent[-1] + g.settle_seconds)
                done = g.console.events("boot_complete")
                if done and done[-1].time is not None:
                    init.append(done[-1].time)
        rows[cpus] = BootRow(Stats.of(agent), Stats.of(settled), Stats.of(init))
        print(f"bench: {cpus:>3} vCPUs: agent after {rows[cpus].to_agent_s.median} s, "
              f"settled after {rows[cpus].to_settled_s.median} s "
              f"(median of {boots}, {accel})", file=sys.stderr, flush=True)
    return BootTimes(accel, rows)


def _harness_run(matrix: Path, jobs: int, out: Path, detectors: str | None = None,
                 qemu: str | None = None) -> float:
    """`harness run` a matrix file (on `qemu` if given); its wall time. Its
    results are in out/."""
    argv = [sys.executable, "-m", "harness", "run", "--matrix", str(matrix),
            "--jobs", str(jobs), "--retries", "0", "--no-progress", "--out", str(out)]
    if detectors:
        argv += ["--detector", detectors]
    env = dict(os.environ, **({"QEMU": qemu} if qemu else {}))
    t0 = time.monotonic()
    subprocess.run(argv, cwd=REPO, stdout=subprocess.DEVNULL, env=env,
                   preexec_fn=die_with_parent)
    if not (out / "results.json").is_file():
        raise HarnessError(f"bench: the run of {matrix} left no results (see {out / 'run.log'})")
    return time.monotonic() - t0


def matrix_run(jobs: int, out: Path, qemu: str | None = None) -> MatrixRow:
    """Run the bench matrix through `harness run`; summarise its results."""
    wall = _harness_run(BENCH_MATRIX, jobs, out, qemu=qemu)
    cases = RunSummary.load(out / "results.json").cases
    latencies = [c.measurements["latency_s"] for c in cases
                 if c.scenario == "hard-lockup" and "latency_s" in c.measurements]
    row = MatrixRow(jobs=jobs, cases=len(cases), wall_s=round(wall, 1),
                    cases_per_min=round(len(cases) / (wall / 60), 2),
                    passed=sum(c.outcome == Outcome.PASS for c in cases),
                    hard_lockup_latency_s=Stats.of(latencies))
    print(f"bench: jobs={jobs}: {row.cases} cases in {row.wall_s} s "
          f"({row.cases_per_min}/min), {row.passed} passed, "
          f"hard lockup latency {Stats.to_json(row.hard_lockup_latency_s)}",
          file=sys.stderr, flush=True)
    return row


def load_results(path: Path) -> RunSummary:
    """A results.json of `harness run` (RunSummary.load), or one clear error."""
    return RunSummary.load(path)


def latency_by_detector(cases: list[CaseRecord]) -> dict[str, dict[str, Stats | None]]:
    """Hard and soft lockup detection latency (report minus injection,
    kernel timestamps) per detector, over the passed cases that have one."""
    out: dict = {}
    for c in cases:
        value = c.measurements.get("latency_s")
        if c.outcome != Outcome.PASS or isinstance(value, bool) \
                or not isinstance(value, (int, float)):
            continue
        kind = "hard_lockup_s" if c.scenario in HARD_FAMILIES else \
            "soft_lockup_s" if c.scenario in SOFT_FAMILIES else None
        if kind:
            out.setdefault(c.detector, {}).setdefault(kind, []).append(value)
    return {d: {k: Stats.of(v) for k, v in sorted(kinds.items())}
            for d, kinds in sorted(out.items())}


def tier_summary(results: RunSummary, source: str) -> TierRow:
    """Cases per minute and latency per detector of one tier's run."""
    cases, meta = results.cases, results.meta
    wall = float(meta.get("wall_s") or 0)
    row = TierRow(source=source, matrix=meta.get("matrix"), jobs=meta.get("jobs"),
                  accel=meta.get("accel"), cases=len(cases),
                  passed=sum(c.outcome in (Outcome.PASS, Outcome.FLAKE) for c in cases),
                  wall_s=round(wall, 1),
                  cases_per_min=round(len(cases) / (wall / 60), 2) if wall else None,
                  latency=latency_by_detector(cases))
    print(f"bench: {source}: {row.cases} cases in {row.wall_s} s "
          f"({row.cases_per_min}/min, jobs {row.jobs}), {row.passed} passed",
          file=sys.stderr, flush=True)
    return row


def _stamp_seconds(path: Path):
    try:
        value = json.loads(path.read_text()).get("build_seconds")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def build_times(kernel_src: str | None = None) -> dict:
    """Cold build seconds as the caches' stamps recorded them (kernel.json
    of each kernel; a QEMU build's stamp if there is one): nothing is built
    here. None when unknown (not built yet, or an older stamp)."""
    times: dict = {}
    for detector in kbuild.KERNELS:
        try:
            key, _, _ = kbuild.kernel_key(detector, kernel_src)
        except HarnessError:
            times[f"kernel_{detector}_s"] = None
            continue
        times[f"kernel_{detector}_s"] = _stamp_seconds(
            cache_dir() / "kernels" / key / "kernel.json")
    # A QEMU build (harness/qemu_build.py) leaves its stamp, with
    # build_seconds, in cache_dir()/qemu/<key>/qemu.json: the newest one.
    stamps = [p for p in cache_dir().glob("qemu/*/qemu.json")
              if _stamp_seconds(p) is not None]
    newest = max(stamps, key=lambda p: p.stat().st_mtime, default=None)
    times["qemu_s"] = _stamp_seconds(newest) if newest else None
    return times


def _git_commit() -> str | None:
    """HEAD, with '+dirty' when the working tree differs from it."""
    r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                            "--untracked-files=no"], capture_output=True, text=True).stdout
    return r.stdout.strip() + ("+dirty" if dirty.strip() else "")


def qemu_bench(qemu: str, detector: str, cpu_counts: list[int], boots: int,
               jobs: list[int], out: Path, kernel, initrd,
               accel: str | None = None) -> QemuRow:
    """Boot times and the bench matrix on one QEMU binary."""
    from harness.qemu import describe_qemu, version_of
    out.mkdir(parents=True, exist_ok=True)
    print(f"bench: QEMU {describe_qemu(qemu)}", file=sys.stderr, flush=True)
    return QemuRow(binary=qemu, version=".".join(map(str, version_of(qemu))),
                   describe=describe_qemu(qemu),
                   boot=boot_times(detector, cpu_counts, boots, out / "boots", kernel,
                                   initrd, qemu, accel),
                   matrix=[matrix_run(j, out / f"matrix-jobs{j}", qemu) for j in jobs])


def qemu_table(rows: dict[str, QemuRow]) -> str:
    """The QEMUs side by side on the same cases: boot to agent per vCPU
    count, cases per minute and hard lockup latency of the bench matrix."""
    names = list(rows)
    lines = ["metric".ljust(30) + "".join(f"{n:>16}" for n in names)]

    def line(label, get):
        vals = []
        for n in names:
            try:
                v = get(rows[n])
            except (KeyError, IndexError, AttributeError):
                v = None
            vals.append("-" if v is None else f"{v:g}")
        lines.append(label.ljust(30) + "".join(f"{v:>16}" for v in vals))
    first = next(iter(rows.values()))
    for c in first.boot.by_cpus:
        line(f"boot to agent, {c} vCPUs (s)",
             lambda r, c=c: r.boot.by_cpus[c].to_agent_s.median)
    for i, m in enumerate(first.matrix):
        line(f"bench matrix jobs={m.jobs}: cases/min", lambda r, i=i: r.matrix[i].cases_per_min)
        line(f"  passed of {m.cases}", lambda r, i=i: r.matrix[i].passed)
        line("  hard lockup latency (s)",
             lambda r, i=i: r.matrix[i].hard_lockup_latency_s.median)
    return "\n".join(lines)


def run(detector: str, cpu_counts: list[int], boots: int, jobs: list[int],
        out: Path, kernel, initrd, smoke: bool = True,
        smoke_results: Path | None = None, nightly_results: Path | None = None,
        qemus: dict | None = None, kernel_src: str | None = None,
        accel: str | None = None) -> BenchReport:
    """Every benchmark; bench.json in `out`. The smoke tier is run here
    unless its results are given (or smoke is False); the nightly tier's
    numbers come from a finished run's results.json only. qemus: label ->
    binary; the first is the default QEMU (its boot and matrix numbers are
    also the top-level "boot" and "matrix"), the others run the same boots
    and the same bench matrix, for the side-by-side table (bench.txt).
    kernel_src: the kernel tree whose build times are reported (None: the
    default source); accel: forced, or probed."""
    out.mkdir(parents=True, exist_ok=True)
    given = {name: load_results(p) for name, p in (("smoke", smoke_results),
                                                   ("nightly", nightly_results)) if p}
    result = BenchReport(
        meta={"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "commit": _git_commit(), "host_cpus": os.cpu_count()},
        detector=detector, build=build_times(kernel_src))
    qemus = qemus or {"default": None}     # None: qemu.default_qemu()
    for i, (label, binary) in enumerate(qemus.items()):
        if binary is None:
            from harness.qemu import default_qemu
            binary = default_qemu()
        row = qemu_bench(binary, detector, cpu_counts, boots, jobs,
                         out / (f"qemu-{label}" if i else "."), kernel, initrd, accel)
        result.qemu[label] = row
        if i == 0:
            result.boot, result.matrix = row.boot, row.matrix
    if len(qemus) > 1:
        table = qemu_table(result.qemu)
        (out / "bench.txt").write_text(table + "\n")
        print(table, file=sys.stderr, flush=True)
    if "smoke" not in given and smoke:
        _harness_run(SMOKE_MATRIX, 1, out / "smoke")
        given["smoke"] = load_results(out / "smoke" / "results.json")
        smoke_results = out / "smoke" / "results.json"
    for name, path in (("smoke", smoke_results), ("nightly", nightly_results)):
        if name in given:
            result.tiers[name] = tier_summary(given[name], str(path))
    result.save(out / "bench.json")
    return result


# --- side by side -----------------------------------------------------------

def load_bench(path: Path) -> dict:
    """A bench.json (BenchReport.load: checked, or one clear error) as the
    document side_by_side compares."""
    return BenchReport.load(path).to_dict()


SKIPPED_KEYS = {"meta", "source"}


def flatten(doc: dict) -> dict[str, float]:
    """The numbers of a bench.json by a dotted name: a statistics object
    gives its median, matrix rows are named by their jobs level."""
    out: dict[str, float] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            if "median" in value:
                out[prefix] = value["median"]
                return
            for k, v in value.items():
                if k not in SKIPPED_KEYS:
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list):
            for i, row in enumerate(value):
                if isinstance(row, dict) and "jobs" in row:   # named by it
                    name, row = f"jobs{row['jobs']}", {k: v for k, v in row.items()
                                                       if k != "jobs"}
                else:
                    name = str(i)
                walk(f"{prefix}.{name}", row)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix] = value

    walk("", doc)
    return out


def _direction(name: str) -> int:
    """+1 when more is better, -1 when less is better, 0 when neither."""
    last = name.rsplit(".", 1)[-1]
    if last in ("cases_per_min", "passed"):
        return 1
    if last.endswith("_s") or name.startswith("boot.") or "latency" in name:
        return -1
    return 0


def _fmt(v) -> str:
    return "-" if v is None else f"{v:g}"


def side_by_side(old: dict, new: dict, old_name: str = "old", new_name: str = "new",
                 worse_at: float = 0.10) -> str:
    """Every number of both runs (bench.json documents: load_bench,
    BenchReport.to_dict), old and new, and new/old; a change of more than
    `worse_at` in the bad direction is marked 'worse'."""
    a, b = flatten(old), flatten(new)
    names = list(b) + [k for k in a if k not in b]
    width = max([len(n) for n in names] + [6])
    lines = [f"{tag}: {name} (commit {doc.get('meta', {}).get('commit') or '?'}, "
             f"{doc.get('meta', {}).get('date') or 'no date'})"
             for tag, name, doc in (("old", old_name, old), ("new", new_name, new))]
    lines.append(f"{'metric':<{width}}  {'old':>9}  {'new':>9}  {'new/old':>7}")
    for n in names:
        va, vb = a.get(n), b.get(n)
        ratio = vb / va if va not in (None, 0) and vb is not None else None
        mark = ""
        if ratio is not None and _direction(n):
            change = (ratio - 1) * _direction(n)
            # Fewer cases passing is worse by any amount.
            limit = 0 if n.endswith(".passed") else worse_at
            mark = "  worse" if change < -limit else "  better" if change > worse_at else ""
        lines.append(f"{n:<{width}}  {_fmt(va):>9}  {_fmt(vb):>9}  "
                     f"{'-' if ratio is None else f'{ratio:.2f}':>7}{mark}")
    return "\n".join(lines)


# --- the time estimate ------------------------------------------------------

# The default cost table, for a run with no previous results.json at hand.
# Measured on the 2-core TCG host (QEMU 7.2, watchdog_thresh=2), one guest
# at a time, with other guests on the host (load 2-5): two runs of the
# smoke tier (`harness run --matrix matrix/smoke.toml`, 2026-11-29 05:36 and
# 06:04 UTC; the buddy boundary sweep from the contract's own runs). Seconds from
# QEMU start to a settled guest by vCPU count, and seconds of a case beyond
# its boot by detector and scenario family. Scenarios that end their guest
# (LKDTM lockups, panics) make the next case boot.
DEFAULT_BOOT_S = {1: 2.4, 2: 2.2, 4: 2.7, 8: 3.6, 16: 9.1}
DEFAULT_RUN_S = {
    ("hpet", "boot"): 0.0, ("hpet", "enabled"): 10.2, ("hpet", "idle"): 6.1,
    ("hpet", "hard-lockup"): 8.1, ("hpet", "soft-lockup"): 12.9,
    ("hpet", "all-but-one-locked"): 8.1, ("hpet", "all-locked"): 8.2,
    ("hpet", "hard-lockup-test_lockup"): 10.7, ("hpet", "soft-lockup-test_lockup"): 17.0,
    ("hpet", "lkdtm-hardlockup"): 3.6, ("hpet", "lkdtm-softlockup"): 7.0,
    ("hpet", "lkdtm-spinlockup"): 6.0, ("hpet", "lkdtm-hung-task"): 8.9,
    ("hpet", "sysrq-backtrace"): 1.4, ("hpet", "cpumask-excluded"): 22.2,
    ("hpet", "handling-cpu-hotplug"): 16.4, ("hpet", "runtime-changes"): 45.0,
    ("hpet", "declines"): 6.0,
    ("buddy", "boot"): 0.0, ("buddy", "enabled"): 0.0, ("buddy", "idle"): 6.0,
    ("buddy", "hard-lockup"): 14.1, ("buddy", "soft-lockup"): 12.9,
    ("buddy", "all-but-one-locked"): 14.1, ("buddy", "all-locked"): 14.1,
    ("buddy", "hard-lockup-test_lockup"): 12.5, ("buddy", "soft-lockup-test_lockup"): 16.2,
    ("buddy", "lkdtm-hardlockup"): 6.0, ("buddy", "lkdtm-softlockup"): 5.0,
    ("buddy", "lkdtm-spinlockup"): 5.8, ("buddy", "lkdtm-hung-task"): 7.1,
    ("perf", "boot"): 0.0, ("perf", "enabled"): 0.0, ("perf", "idle"): 6.1,
    ("perf", "hard-lockup"): 9.0, ("perf", "soft-lockup"): 12.9, ("perf", "all-locked"): 9.1,
    ("hpet", "boundary-sweep"): 162.0, ("buddy", "boundary-sweep"): 160.0,
    ("hpet", "unknown-nmi"): 15.7, ("buddy", "unknown-nmi"): 18.4,
    ("hpet", "vm-pause"): 20.2, ("hpet", "nmi-stall"): 19.2,
    ("hpet", "unknown-nmi-panic"): 0.9,
    # 2026-11-29, one case each (harness run --scenario ...).
    ("hpet", "machine-stalls"): 22.0, ("buddy", "machine-stalls"): 22.0,
    # 2026-11-29, 10 cases (2 and 4 vCPUs, both fallbacks), host busy.
    ("hpet", "detector-lost"): 14.0,
}
DEFAULT_ENDS_GUEST = {"lkdtm-hardlockup", "lkdtm-softlockup", "lkdtm-spinlockup",
                      "lkdtm-hung-task", "hard-lockup+panic", "unknown-nmi-panic",
                      "detector-lost"}
FALLBACK_RUN_S = 8.0     # a scenario family nobody has measured yet


def _ends_key(scenario: str, panic: bool) -> str:
    return scenario + ("+panic" if panic else "")


def _guest(attempt: Attempt) -> str:
    return Path(attempt.guest or "").name


@dataclass
class CostModel:
    """Seconds per boot by vCPU count and per case beyond its boot by
    (detector, family, vCPUs): measured ones first, then the default table."""
    source: str = "the default table in harness/bench.py"
    boot: dict = field(default_factory=dict)          # cpus -> [s]
    run: dict = field(default_factory=dict)           # (detector, family, cpus) -> [s]
    ends: dict = field(default_factory=dict)          # family(+panic) -> bool

    def boot_s(self, cpus: int) -> float:
        table = {c: statistics.median(v) for c, v in self.boot.items()} or DEFAULT_BOOT_S
        if cpus not in table:
            table = {**DEFAULT_BOOT_S, **table}
        near = min(table, key=lambda c: (abs(c - cpus), -c))
        # Boot time grows about linearly with vCPUs under TCG past the table.
        return table[near] * (cpus / near if cpus > near else 1)

    def run_s(self, detector: str, family: str, cpus: int) -> tuple[float, bool]:
        """(seconds, measured?)"""
        same = {c: v for (d, f, c), v in self.run.items() if d == detector and f == family}
        if same:
            near = min(same, key=lambda c: (abs(c - cpus), -c))
            return statistics.median(same[near]), True
        if (detector, family) in DEFAULT_RUN_S:
            return DEFAULT_RUN_S[(detector, family)], False
        other = [s for (d, f, c), v in self.run.items() if f == family for s in v]
        if other:
            return statistics.median(other), True
        return next((s for (d, f), s in DEFAULT_RUN_S.items() if f == family),
                    FALLBACK_RUN_S), False

    def ends_guest(self, scenario: str, panic: bool) -> bool:
        key = _ends_key(scenario, panic)
        return self.ends.get(key, key in DEFAULT_ENDS_GUEST)


def learn(results: RunSummary, source: str) -> CostModel:
    """A cost model from a finished run: a case that was the first on its
    guest paid for the boot; a 'boot' case first on its guest is little
    more than the boot, so it measures the boot."""
    model = CostModel(source=source)
    seen: set[str] = set()
    booted = []
    for c in results.cases:
        n = 0
        for a in c.attempts:
            g = _guest(a)
            if g and g not in seen:
                seen.add(g)
                n += 1
        booted.append(n)
        if c.scenario == "boot" and c.outcome == Outcome.PASS and n == 1:
            model.boot.setdefault(c.spec["cpus"], []).append(c.duration_s)
    for c, n in zip(results.cases, booted):
        # A boot case that booted its guest measured the boot (above).
        if c.outcome != Outcome.PASS or (c.scenario == "boot" and n == 1):
            continue
        cpus = c.spec["cpus"]
        model.run.setdefault((c.detector, c.scenario, cpus), []).append(
            max(0.0, c.duration_s - n * model.boot_s(cpus)))
    # Did the next case on the same machine find the guest still up?
    cases = results.cases
    for prev, nxt in zip(cases, cases[1:]):
        if prev.outcome != Outcome.PASS or prev.detector != nxt.detector \
                or prev.spec != nxt.spec or not prev.attempts or not nxt.attempts:
            continue
        key = _ends_key(prev.scenario, prev.spec.get("hardlockup_panic"))
        ends = _guest(nxt.attempts[0]) != _guest(prev.attempts[-1])
        model.ends[key] = model.ends.get(key, False) or ends
    return model


@dataclass
class Estimate:
    seconds: float
    cases: int
    boots: int
    measured: int
    jobs: int
    model: CostModel

    def line(self) -> str:
        default = self.cases - self.measured
        parts = [f"{self.measured} measured in {self.model.source}"] if self.measured else []
        if default:
            parts.append(f"{default} from the default table in harness/bench.py")
        return (f"estimated {self.seconds / 60:.1f} min for {self.cases} cases "
                f"({self.boots} boots, {self.jobs} at a time); case costs: "
                + ", ".join(parts))


def estimate(cases: list, model: CostModel, jobs: int = 1) -> Estimate:
    """Seconds to run `cases` (matrix.Case, in run order): the runner keeps
    a guest for the next case on the same machine unless the case ended it.
    With jobs > 1, whole machines are spread over the workers (longest
    first, to the least loaded), as the runner's workers take them."""
    per_machine: dict[str, float] = {}
    total, boots, measured, prev_key, alive = 0.0, 0, 0, None, False
    for case in cases:
        cost = 0.0
        if case.guest_key != prev_key or not alive:
            cost += model.boot_s(case.spec.cpus)
            boots += 1
        run_s, was_measured = model.run_s(case.detector, case.scenario, case.spec.cpus)
        cost += run_s
        measured += was_measured
        per_machine[case.guest_key] = per_machine.get(case.guest_key, 0.0) + cost
        total += cost
        prev_key, alive = case.guest_key, not model.ends_guest(case.scenario,
                                                               case.spec.hardlockup_panic)
    if jobs > 1:
        loads = [0.0] * jobs
        for c in sorted(per_machine.values(), reverse=True):
            loads[loads.index(min(loads))] += c
        total = max(loads)
    return Estimate(total, len(cases), boots, measured, max(1, jobs), model)


def cost_model(path: Path | None, required: bool) -> CostModel:
    """From a previous results.json when there is one; the default table
    otherwise. A path given explicitly must be a results.json."""
    if path is None or (not required and not Path(path).is_file()):
        return CostModel()
    try:
        results = load_results(path)
    except HarnessError:
        if required:
            raise
        return CostModel()
    meta = results.meta
    source = f"{path} ({len(results.cases)} cases, {meta.get('started', '?')}, " \
             f"{meta.get('accel') or '?'}, jobs {meta.get('jobs', '?')})"
    return learn(results, source)
