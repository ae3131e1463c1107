"""Every scenario by name, as the command line and the tests call them.

Each entry takes (guest, detector, cpu); cpu is the CPU to act on where the
scenario has one (None otherwise); a scenario with parameters takes them as
keywords (runner.RunRequest.scenario_args), with defaults.
"""

import inspect

from harness import contract_scenarios as cs
from harness import debug_checks
from harness import detector_scenarios as ds
from harness import platform_scenarios as ps
from harness import scenarios as sc
from harness.errors import HarnessError

SCENARIOS = {
    "boot": lambda g, d, cpu: sc.boot(g, d),
    "idle": lambda g, d, cpu: sc.idle(g),
    # `make soak DURATION=`: harness run --soak-seconds.
    "soak": lambda g, d, cpu, seconds=600.0: sc.soak(g, d, seconds),
    "hard-lockup": lambda g, d, cpu: sc.hard_lockup(g, d, cpu),
    "soft-lockup": lambda g, d, cpu: sc.soft_lockup(g, d, cpu),
    "hard-lockup-test_lockup": lambda g, d, cpu: sc.hard_lockup(g, d, cpu, "test_lockup"),
    "soft-lockup-test_lockup": lambda g, d, cpu: sc.soft_lockup(g, d, cpu, "test_lockup"),
    **{f"lkdtm-{crash.lower().replace('_', '-')}":
       (lambda crash: lambda g, d, cpu: sc.lkdtm(g, d, cpu, crash))(crash)
       for crash in sc.LKDTM_TYPES},
    "enabled": lambda g, d, cpu: ds.enabled(g, d),
    "all-locked": lambda g, d, cpu: ds.many_locked(g, d, list(range(g.spec.cpus))),
    "all-but-one-locked": lambda g, d, cpu: ds.many_locked(
        g, d, [c for c in range(g.spec.cpus) if c != (cpu or 0)]),
    "cpumask-excluded": lambda g, d, cpu: ds.cpumask_excluded(g, d, cpu),
    "runtime-changes": lambda g, d, cpu: ds.runtime_changes(g, d),
    "handling-cpu-hotplug": lambda g, d, cpu: ds.handling_cpu_hotplug(g, d),
    "declines": lambda g, d, cpu: ds.declines(g, d),
    # The HPET detector's interrupt path on this APIC x IOMMU x comparator
    # machine (expectations.PATHS), checked in the guest.
    "irq-path": lambda g, d, cpu: ds.irq_path(g, d),
    "sysrq-backtrace": lambda g, d, cpu: ds.sysrq_backtrace(g, d),
    # The HPET detector stops working at run time: it says so, and the
    # detector its kernel falls back to takes over, or the kernel says none.
    "detector-lost": lambda g, d, cpu: ds.detector_lost(g, d),
    # What must not happen: no report below watchdog_thresh, no NMI taken
    # from its owner or from the unknown NMI path.
    # per_length: sections of each length (matrix/smoke.toml takes fewer).
    "boundary-sweep": lambda g, d, cpu, per_length=cs.SWEEP_PER_LENGTH:
        cs.boundary_sweep(g, d, per_length),
    "unknown-nmi": lambda g, d, cpu: cs.unknown_nmis(g, d),
    "unknown-nmi-panic": lambda g, d, cpu: cs.unknown_nmi_panic(g, d),
    # Liveness: the detector comes back after its handling CPU was stuck in
    # NMI context, and after the whole machine was paused.
    "nmi-stall": lambda g, d, cpu: cs.nmi_stall(g, d),
    "vm-pause": lambda g, d, cpu: cs.vm_pause(g, d),
    # No unknown NMI, no report, while the machine keeps being frozen for
    # a while with its clocks running on (SMIs, a starved VM).
    "machine-stalls": lambda g, d, cpu: cs.machine_stalls(g, d),
    "suspend-resume": lambda g, d, cpu: ps.suspend_resume(g, d),
    "hpet-users": lambda g, d, cpu: ps.hpet_users(g, d),
    # CPUs the detector must not touch: outside watchdog_cpumask, or never
    # booted (a machine with nr_cpus= or maxcpus= on its command line).
    "untouched-cpus": lambda g, d, cpu: ps.untouched_cpus(g, d),
    "unbooted-cpus": lambda g, d, cpu: ps.unbooted_cpus(g, d),
    # hardlockup_panic=1 boots a crash kernel (a machine with crash_kernel).
    "kdump": lambda g, d, cpu: ps.kdump(g, d),
    # The channel's IRTE follows its handling CPU (the HPET behind the IOMMU).
    "irte-retarget": lambda g, d, cpu: ps.irte_retarget(g, d),
    # Deliberately wrong: locks up `cpu` but expects the report on the next
    # CPU. It must fail; it shows what a failure looks like in the reports.
    "canary-wrong-cpu": lambda g, d, cpu: sc.hard_lockup(
        g, d, cpu, expect_cpu=(cpu + 1) % g.spec.cpus),
    # Deliberately wrong too: asks the kernel for a lock inversion, a sleep
    # in atomic context and smp_processor_id() in preemptible code. On a
    # debug flavour kernel (--flavour debug) its reports must fail it.
    "canary-debug-report": lambda g, d, cpu: debug_checks.canary(g, d),
}

# Scenarios that act on one CPU (the others take none), and those that need
# more than one CPU to mean anything.
TAKES_CPU = {"hard-lockup", "soft-lockup", "hard-lockup-test_lockup",
             "soft-lockup-test_lockup", "all-but-one-locked", "cpumask-excluded",
             "canary-wrong-cpu", *(n for n in SCENARIOS if n.startswith("lkdtm-"))}
NEEDS_TWO_CPUS = {"detector-lost", "all-locked", "all-but-one-locked", "canary-wrong-cpu",
                  "cpumask-excluded", "handling-cpu-hotplug", "untouched-cpus",
                  "unbooted-cpus", "irte-retarget"}


def get(name: str):
    if name not in SCENARIOS:
        raise HarnessError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    return SCENARIOS[name]


def check_args(name: str, args) -> dict:
    """Keywords for scenario `name` (a matrix file's [scenario_args], the
    command line's --soak-seconds), checked before any work: each one a
    parameter the scenario has, a number like its default, more than 0."""
    params = {p.name: p.default for p in inspect.signature(get(name)).parameters.values()
              if p.default is not inspect.Parameter.empty}
    if not isinstance(args, dict):
        raise HarnessError(f"scenario {name!r}: its arguments must be a table, not {args!r}")
    for key, value in args.items():
        if key not in params:
            known = ", ".join(params) or "none"
            raise HarnessError(f"scenario {name!r} has no parameter {key!r}; known: {known}")
        kind = type(params[key])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (kind is int and not isinstance(value, int)):
            raise HarnessError(f"scenario {name!r}: {key} = {value!r}: expected "
                               f"{'a whole number' if kind is int else 'a number'}")
        if not value > 0:
            raise HarnessError(f"scenario {name!r}: {key} = {value!r}: must be more than 0")
    return args
