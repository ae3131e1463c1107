"""A run, in one process: cases -> kernels -> guests -> case records -> reports.

    result = runner.run(runner.RunRequest(cases, Path("out"), jobs=1))
    sys.exit(result.exit_status)

composed of stages that can each be called alone, as the kernel's kunit.py
composes config -> build -> exec -> parse:

    build(detectors)        the kernels and initramfs images (cached builds)
    execute(cases, ...)     every case on a guest: its record, in case order
    summarise(records, ...) the records and the run's facts (results.json)
    write_outputs(...)      results.json, report.html, report.ktap, junit.xml

and run() does them in turn, with a line per case in run.log (and on
stderr) and the finished cases reported if the run is interrupted.

With jobs > 1 the guests run in worker processes, each machine's cases on
one worker (they share its booted guest); with one job, here. No pytest:
`make test` runs pytest for the harness's own tests, this for the matrix.
"""
import multiprocessing
import os
import queue
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from harness import accel as accel_mod
from harness import catalog, initramfs, junit, report
from harness.case_runner import GuestPool, run_case
from harness.detectors import with_flavour
from harness.errors import HarnessError
from harness.matrix import Case
from harness.qemu import die_with_parent
from harness.records import CaseRecord, Outcome, RunSummary, write_atomic


class WorkerLost(HarnessError):
    """A worker process ended without finishing its cases (killed, or a
    harness bug): the run failed, its input was fine."""

    exit_code = 1


@dataclass(frozen=True)
class RunRequest:
    """What to run and how; every knob of a run is here, none in the
    environment (KERNEL_SRC is read once, by the command line)."""
    cases: tuple[Case, ...]
    out: Path
    jobs: int = 1
    retries: int = 1
    kernel_src: str | None = None
    matrix: str = "command line"          # where the cases came from, for the reports
    command: str = ""                     # the command line, for the reports
    progress: bool = True                 # per case on stderr (a bar on a terminal)
    # Keywords for scenarios that take parameters: {"soak": {"seconds": 1800}}
    scenario_args: dict = field(default_factory=dict)
    qemu: str | None = None               # the QEMU binary (None: qemu.default_qemu())

    def __post_init__(self):
        if not self.cases:
            raise HarnessError("a run needs at least one case")
        if self.jobs < 1:
            raise HarnessError(f"jobs must be at least 1, not {self.jobs}")
        if self.retries < 0:
            raise HarnessError(f"retries must be 0 or more, not {self.retries}")
        for name, args in self.scenario_args.items():
            catalog.check_args(name, args)  # bad input: one error line

    @property
    def detectors(self) -> list[str]:
        """In the order the cases name them; the first chooses the accelerator."""
        return list(dict.fromkeys(c.detector for c in self.cases))

    @property
    def kernels(self) -> list[tuple[str, str | None]]:
        """(detector, flavour) of each kernel the cases boot, in their order."""
        return list(dict.fromkeys((c.detector, c.spec.flavour) for c in self.cases))


@dataclass
class RunResult:
    summary: RunSummary                    # what results.json holds
    paths: dict[str, Path] = field(default_factory=dict)   # what was written

    @property
    def records(self) -> list[CaseRecord]:
        return self.summary.cases

    @property
    def counts(self) -> dict[Outcome, int]:
        return self.summary.counts()

    @property
    def exit_status(self) -> int:
        return self.summary.exit_status

    def failures(self) -> list[CaseRecord]:
        return [r for r in self.records if not r.outcome.ok]


# --- build -----------------------------------------------------------------

def build(kernels, kernel_src: str | None = None) -> dict:
    """Each detector, or (detector, flavour), to its (Kernel, initramfs),
    built or taken from the cache; keyed by detectors.with_flavour."""
    built = {}
    for k in kernels:
        detector, flavour = (k, None) if isinstance(k, str) else k
        built[with_flavour(detector, flavour)] = initramfs.build_guest(
            detector, kernel_src, flavour)
    return built


def choose_accel(built: dict, detector: str, flavour: str | None = None) -> str:
    kernel, initrd = built[with_flavour(detector, flavour)]
    return accel_mod.choose_accel(kernel.bzimage, initrd)


# --- execute ---------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """What every worker needs to run cases: picklable, passed, not global."""
    out: Path
    accel: str
    retries: int
    kernel_src: str | None
    built: dict
    scenario_args: dict
    qemu: str | None

    def pool(self) -> GuestPool:
        return GuestPool(self.accel, self.out, self.kernel_src, built=self.built,
                         qemu=self.qemu)

    def run_case(self, case: Case, pool: GuestPool) -> CaseRecord:
        return run_case(case, pool, self.retries, self.scenario_args.get(case.scenario))


def machine_groups(cases) -> list[list[int]]:
    """Case indices per guest (same detector and machine), in first-seen
    order, the largest group first: whole machines go to one worker, and
    the longest ones start first."""
    groups: dict[str, list[int]] = {}
    for i, case in enumerate(cases):
        groups.setdefault(case.guest_key, []).append(i)
    return sorted(groups.values(), key=len, reverse=True)


def execute(cases, setting: Setting, jobs: int = 1, on_record=None) -> list[CaseRecord]:
    """Run every case; its record, in the order of `cases`. `on_record(record)`
    is called as each case finishes (progress)."""
    cases = list(cases)
    on_record = on_record or (lambda record: None)
    if jobs <= 1 or len(machine_groups(cases)) == 1:
        return _execute_here(cases, setting, on_record)
    return _execute_in_workers(cases, setting, jobs, on_record)


def _execute_here(cases: list[Case], setting: Setting, on_record) -> list[CaseRecord]:
    pool = setting.pool()
    records = []
    try:
        for case in cases:
            records.append(setting.run_case(case, pool))
            on_record(records[-1])
    finally:
        pool.retire()
    return records


# A worker's messages to the runner: ("record", case index, record),
# ("done", worker, None), ("crashed", worker, traceback text).
def _worker(number: int, cases: list[Case], groups: list[list[int]], next_group,
            setting: Setting, results) -> None:
    die_with_parent()                       # and its guests with it
    # Ctrl-C reaches the whole process group: the runner alone decides, and
    # stops the workers with SIGTERM (which stops their guests).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pool = setting.pool()
    try:
        while True:
            with next_group.get_lock():
                g = next_group.value
                next_group.value += 1
            if g >= len(groups):
                break
            for i in groups[g]:
                results.put(("record", i, setting.run_case(cases[i], pool)))
            pool.retire()                   # the next group is another machine
        results.put(("done", number, None))
    except BaseException:
        results.put(("crashed", number, traceback.format_exc()))
        raise
    finally:
        pool.retire()


def _execute_in_workers(cases: list[Case], setting: Setting, jobs: int,
                        on_record) -> list[CaseRecord]:
    ctx = multiprocessing.get_context("spawn")   # no fork of a process with threads
    groups = machine_groups(cases)
    results, next_group = ctx.Queue(), ctx.Value("i", 0)
    workers = [ctx.Process(target=_worker, name=f"harness-worker-{n}", daemon=True,
                           args=(n, cases, groups, next_group, setting, results))
               for n in range(min(jobs, len(groups)))]
    records: dict[int, CaseRecord] = {}
    done: set[int] = set()
    ended: dict[int, float] = {}         # worker -> when it was first seen gone
    try:
        for w in workers:
            w.start()
        while len(done) < len(workers):
            try:
                kind, key, value = results.get(timeout=1.0)
            except queue.Empty:
                # A worker that ended without "done" (killed, or its last
                # message still in the pipe: give that a few seconds).
                now = time.monotonic()
                for n, w in enumerate(workers):
                    if n not in done and w.exitcode is not None:
                        if now - ended.setdefault(n, now) > 5.0:
                            raise WorkerLost(f"worker {n} died (exit {w.exitcode}) "
                                             f"before finishing its cases")
                continue
            if kind == "record":
                records[key] = value
                on_record(value)
            elif kind == "done":
                done.add(key)
            else:
                raise WorkerLost(f"worker {key} failed:\n{value}")
    except BaseException:
        _stop_workers(workers)
        raise
    _stop_workers(workers, finish_s=10.0)
    missing = [cases[i].id for i in range(len(cases)) if i not in records]
    if missing:
        raise HarnessError(f"no record for {len(missing)} case(s), e.g. {missing[0]}")
    return [records[i] for i in range(len(cases))]


def _stop_workers(workers, finish_s: float = 0.0, grace_s: float = 30.0) -> None:
    """Workers that said "done" end by themselves within `finish_s`; the
    others (after an error, Ctrl-C) get SIGTERM (their guests stop with
    them); any left at the deadline, SIGKILL."""
    deadline = time.monotonic() + finish_s
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
    for w in workers:
        if w.is_alive():
            w.terminate()
    deadline = time.monotonic() + grace_s
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
        if w.is_alive():
            w.kill()
            w.join(5)


# --- progress --------------------------------------------------------------

class Progress:
    """A bar on a terminal, a line per case otherwise (CI logs); every
    line goes to `log` too."""

    def __init__(self, total: int, log, to_stderr: bool):
        self.total, self.log, self.done = total, log, 0
        self.records: list[CaseRecord] = []      # as they finished
        self.t0 = time.monotonic()
        self.bar = None
        self.lines = to_stderr and not sys.stderr.isatty()
        if to_stderr and sys.stderr.isatty():
            self.bar = tqdm(total=total, unit="case", file=sys.stderr, dynamic_ncols=True,
                            bar_format="{n}/{total} cases [{elapsed}<{remaining}] {desc}")

    def __call__(self, record: CaseRecord) -> None:
        self.records.append(record)
        self.done += 1
        elapsed = time.monotonic() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        line = (f"[{self.done}/{self.total} {elapsed / 60:.0f}m ETA {eta / 60:.0f}m] "
                f"{record.outcome.upper()} {record.id}: {record.reason}")
        print(line, file=self.log, flush=True)
        if self.lines:
            print(line, file=sys.stderr, flush=True)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_description_str(record.id)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- summarise and write ---------------------------------------------------

def summarise(records: list[CaseRecord], request: RunRequest, accel: str, started: str,
              wall_s: float) -> RunSummary:
    """The run summary results.json holds: its facts ("meta") and records."""
    return RunSummary({
        "started": started,
        "wall_s": round(wall_s, 1),
        "accel": ",".join(sorted({r.accel for r in records})) or accel,
        "host_cpus": os.cpu_count(),
        "jobs": request.jobs,
        "matrix": request.matrix,
        "command": request.command,
        "scenario_args": request.scenario_args,
        "kernels": {with_flavour(r.detector, r.spec.get("flavour")): r.kernel
                    for r in records},
        "qemu": sorted({r.qemu for r in records if r.qemu})}, list(records))


MEASUREMENTS_SHOWN = ("boot_seconds", "settle_seconds", "latency_s", "nmi_per_cpu_per_s",
                      "tsc_error_ns", "knock_on_cpus")


def measurements_table(records: list[CaseRecord]) -> str:
    """The headline measurement of every case, a line each (run.log)."""
    lines = []
    for r in records:
        shown = ", ".join(f"{k}={r.measurements[k]}" for k in MEASUREMENTS_SHOWN
                          if k in r.measurements)
        if shown:
            lines.append(f"{r.outcome.upper():<5} {r.id:<48} {shown}")
    return "\n".join(lines)


def write_outputs(summary: RunSummary, out: Path) -> dict[str, Path]:
    """results.json, then the reports made from it; each written whole."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": summary.save(out / "results.json"),
             **report.write_reports(summary, out)}
    paths["junit"] = out / "junit.xml"
    write_atomic(paths["junit"], junit.xml(summary, out))
    return paths


def run(request: RunRequest, built: dict | None = None, accel: str | None = None) -> RunResult:
    """The whole run. `built` (from build()) and `accel` may be given by a
    caller that already has them."""
    out = Path(request.out)
    built = built or build(request.kernels, request.kernel_src)
    accel = accel or choose_accel(built, *request.kernels[0])
    setting = Setting(out, accel, request.retries, request.kernel_src, built,
                      request.scenario_args, request.qemu)
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    with open(out / "run.log", "w") as log:
        print(f"{len(request.cases)} cases of {request.matrix}, {request.jobs} at a time, "
              f"{accel}; {request.command}", file=log, flush=True)
        progress = Progress(len(request.cases), log, request.progress)
        try:
            records = execute(request.cases, setting, request.jobs, progress)
        except (KeyboardInterrupt, SystemExit):
            # Ctrl-C or SIGTERM: the guests are stopped; what finished is
            # reported (marked interrupted), then the run ends as asked.
            if progress.records:
                summary = summarise(progress.records, request, accel, started,
                                    time.monotonic() - t0)
                summary.meta["interrupted"] = (f"after {len(progress.records)} of "
                                               f"{len(request.cases)} cases")
                write_outputs(summary, out)
            raise
        finally:
            progress.close()
        summary = summarise(records, request, accel, started, time.monotonic() - t0)
        print(measurements_table(records), file=log)
        print(", ".join(f"{n} {o}" for o, n in summary.counts().items())
              + f" in {summary.meta['wall_s'] / 60:.1f} min", file=log)
    return RunResult(summary, write_outputs(summary, out))
