"""Run matrix cases on shared guests, retry failures on a fresh guest, and
keep each case's artifacts.

Consecutive cases on the same detector and machine share one booted guest
(a boot under TCG costs seconds). A case that fails retires its guest, so a
retry, and the next case, start from a fresh boot: a guest that misbehaved
once is not trusted with another verdict.
"""
import json
import os
import time
import traceback
from pathlib import Path

from harness import catalog, debug_checks, detectors, initramfs
from harness.errors import GuestError
from harness.matrix import Case, guest_key
from harness.qemu import Guest, default_qemu, describe_qemu, machine_lacks
from harness.records import Attempt, CaseRecord, Outcome
from harness.scenarios import mark


class GuestPool:
    def __init__(self, accel: str, out: Path, kernel_src: str | None = None,
                 built: dict | None = None, qemu: str | None = None):
        """`built`: detector (detectors.with_flavour) -> (kernel, initramfs)
        the caller built already;
        `qemu`: the binary (default: qemu.default_qemu())."""
        self.accel, self.out, self.kernel_src = accel, Path(out), kernel_src
        self.guest: Guest | None = None
        self.key: str | None = None
        self.boots = 0
        self._built: dict = dict(built or {})
        self._qemu: str | None = qemu

    @property
    def qemu(self) -> str:
        """The QEMU binary every guest of this pool runs on (default_qemu)."""
        if self._qemu is None:
            self._qemu = default_qemu()
        return self._qemu

    def build(self, detector: str, flavour: str | None = None):
        """The kernel (in a flavour) and initramfs for a detector, built
        once per process."""
        name = detectors.with_flavour(detector, flavour)
        if name not in self._built:
            self._built[name] = initramfs.build_guest(detector, self.kernel_src, flavour)
        return self._built[name]

    def kernel_id(self, detector: str, flavour: str | None = None) -> str:
        kernel, _ = self.build(detector, flavour)
        return f"{kernel.release} ({kernel.build_dir.parent.name})"

    def get(self, detector: str, spec) -> Guest:
        key = guest_key(detector, spec)
        g = self.guest
        if g is not None and self.key == key and g.alive():
            return g
        self.retire()
        kernel, initrd = self.build(detector, spec.flavour)
        self.boots += 1
        # The pid keeps parallel workers' guest directories apart.
        workdir = self.out / "guests" / f"{detector}-{spec.label()}-{os.getpid()}-boot{self.boots}"
        g = Guest(spec, kernel.bzimage, initrd, workdir, self.accel, qemu=self.qemu).start()
        self.guest, self.key = g, key
        g.wait_booted()
        return g

    def retire(self) -> None:
        if self.guest is not None:
            self.guest.stop()
            self.guest = None


def _attempt(case: Case, pool: GuestPool, case_dir: Path, n: int,
             params: dict) -> tuple[Attempt, dict, bool]:
    """One try of a case: (the attempt, its measurements, whether the
    kernel reported a defect of its own: then it is not tried again)."""
    t0 = time.monotonic()
    guest, start, measurements, defect = None, 0, {}, None
    try:
        guest = pool.get(case.detector, case.spec)
        start = mark(guest)
        result = catalog.get(case.scenario)(guest, case.detector, case.cpu, **params)
        attempt = Attempt(result.passed, result.reason)
        measurements = result.measurements
    except GuestError as e:
        attempt = Attempt(False, str(e), error=True, console_tail=e.console_tail)
    except Exception as e:
        # A scenario that broke (a harness bug): this case is an error with
        # the traceback; the run goes on with the next case.
        attempt = Attempt(False, f"harness error: {type(e).__name__}: {e}", error=True,
                          console_tail=traceback.format_exc())
    attempt.duration_s = round(time.monotonic() - t0, 2)
    # TCG guests feel host load as lost time: kept to explain flakes by.
    attempt.host_load = round(os.getloadavg()[0], 2)
    if guest is not None:
        attempt.guest = os.path.relpath(guest.workdir, case_dir)
        guest.console.refresh()
        window = "\n".join(guest.console.text.splitlines()[start:])
        (case_dir / f"console-attempt{n}.log").write_text(window + "\n")
        events = [e.to_dict() for e in guest.console.events() if e.line > start]
        (case_dir / f"events-attempt{n}.json").write_text(json.dumps(events, indent=1))
        # The guest's whole console: what fell outside the scenario's window too.
        defect = debug_checks.verdict(guest.console.events())
        if defect:
            scenario_said = f" (the scenario: {attempt.reason})" if attempt.reason else ""
            attempt.passed, attempt.error = False, False
            attempt.reason = defect + scenario_said
            first = debug_checks.reports(guest.console.events())[0].line
            attempt.console_tail = "\n".join(guest.console.text.splitlines()[first - 1:first + 39])
        if not attempt.passed and not attempt.console_tail:
            attempt.console_tail = guest.console.tail(40)
    if not attempt.passed:
        pool.retire()
    return attempt, measurements, defect is not None


def run_case(case: Case, pool: GuestPool, retries: int = 0,
             params: dict | None = None) -> CaseRecord:
    """Run a case (and up to `retries` retries after a failure); return its
    record for the reports. Its artifacts go to <out>/cases/<slug>/.
    `params`: keywords for the scenario (e.g. a soak's seconds)."""
    case_dir = pool.out / "cases" / case.slug
    case_dir.mkdir(parents=True, exist_ok=True)
    attempts, measurements = [], {}
    lacks = machine_lacks(case.spec, pool.accel, pool.qemu)
    if lacks:               # skipped by name, with what the QEMU lacks
        attempts.append(Attempt(True, f"skipped: {lacks}", skipped=True))
    for n in range(1, 0 if lacks else retries + 2):
        attempt, measurements, defect = _attempt(case, pool, case_dir, n, params or {})
        attempts.append(attempt)
        if attempt.passed or defect:
            break
    last = attempts[-1]
    if last.skipped:
        outcome = Outcome.SKIP
    elif last.passed:
        outcome = Outcome.FLAKE if len(attempts) > 1 else Outcome.PASS
    else:
        outcome = Outcome.ERROR if last.error else Outcome.FAIL
    d = case.to_dict()
    record = CaseRecord(
        id=case.id, detector=case.detector, machine=case.spec.label(),
        scenario=case.scenario, outcome=outcome, reason=last.reason, cpu=case.cpu,
        spec=d["spec"], attempts=attempts,
        duration_s=round(sum(a.duration_s for a in attempts), 2),
        measurements=measurements, reproduce=case.reproduce(params), accel=pool.accel,
        kernel=pool.kernel_id(case.detector, case.spec.flavour), qemu=describe_qemu(pool.qemu),
        artifacts=os.path.relpath(case_dir, pool.out),
        console_tail="" if outcome in (Outcome.PASS, Outcome.SKIP) else next(
            (a.console_tail for a in reversed(attempts) if a.console_tail), ""))
    (case_dir / "case.json").write_text(json.dumps(record.to_dict(), indent=1, default=str))
    (case_dir / "reproduce.txt").write_text(record.reproduce + "\n")
    return record
