"""Benchmarks, not tests: boot-to-agent time per vCPU count, and the wall
time, cases per minute and detection latency of a small matrix run at one
or more parallelism levels. Numbers are printed and saved, never asserted.
"""
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import accel as accel_mod
from harness import expectations
from harness.machine import MachineSpec
from harness.paths import REPO
from harness.qemu import Guest, die_with_parent

BENCH_MATRIX = REPO / "matrix" / "bench.toml"


def _stats(values: list[float]) -> dict:
    if not values:
        return {}
    return {"n": len(values), "median": round(statistics.median(values), 2),
            "min": round(min(values), 2), "max": round(max(values), 2)}


def boot_times(detector: str, cpu_counts: list[int], boots: int, out: Path,
               kernel, initrd) -> dict:
    """Host seconds from QEMU start to the agent's banner, and to a settled
    clocksource; guest seconds to /init from the kernel's timestamps."""
    accel = accel_mod.choose_accel(kernel.bzimage, initrd)
    rows = {}
    for cpus in cpu_counts:
        spec = MachineSpec(cpus=cpus, **expectations.machine_defaults(detector))
        agent, settled, init = [], [], []
        for i in range(boots):
            with Guest(spec, kernel.bzimage, initrd, out / f"boot-{cpus}cpu-{i}", accel) as g:
                agent.append(g.wait_booted())
                settled.append(agent[-1] + g.settle_seconds)
                done = g.console.events("boot_complete")
                if done and done[-1].time is not None:
                    init.append(done[-1].time)
        rows[cpus] = {"to_agent_s": _stats(agent), "to_settled_s": _stats(settled),
                      "guest_to_init_s": _stats(init)}
        print(f"bench: {cpus:>3} vCPUs: agent after {rows[cpus]['to_agent_s']['median']} s, "
              f"settled after {rows[cpus]['to_settled_s']['median']} s "
              f"(median of {boots}, {accel})", file=sys.stderr, flush=True)
    return {"accel": accel, "by_cpus": rows}


def matrix_run(jobs: int, out: Path) -> dict:
    """Run the bench matrix through `harness run`; summarise its results."""
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "harness", "run", "--matrix", str(BENCH_MATRIX),
                    "--jobs", str(jobs), "--retries", "0", "--no-progress",
                    "--out", str(out)], cwd=REPO, stdout=subprocess.DEVNULL,
                   preexec_fn=die_with_parent)
    wall = time.monotonic() - t0
    cases = json.loads((out / "results.json").read_text())["cases"]
    latencies = [c["measurements"]["latency_s"] for c in cases
                 if c["scenario"] == "hard-lockup" and "latency_s" in c["measurements"]]
    row = {"jobs": jobs, "cases": len(cases), "wall_s": round(wall, 1),
           "cases_per_min": round(len(cases) / (wall / 60), 2),
           "passed": sum(c["outcome"] == "pass" for c in cases),
           "hard_lockup_latency_s": _stats(latencies)}
    print(f"bench: jobs={jobs}: {row['cases']} cases in {row['wall_s']} s "
          f"({row['cases_per_min']}/min), {row['passed']} passed, "
          f"hard lockup latency {row['hard_lockup_latency_s']}", file=sys.stderr, flush=True)
    return row


def run(detector: str, cpu_counts: list[int], boots: int, jobs: list[int],
        out: Path, kernel, initrd) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    result = {"detector": detector,
              "boot": boot_times(detector, cpu_counts, boots, out / "boots", kernel, initrd),
              "matrix": [matrix_run(j, out / f"matrix-jobs{j}") for j in jobs]}
    (out / "bench.json").write_text(json.dumps(result, indent=1))
    return result
