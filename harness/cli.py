"""Command line: build, parse console logs, run a scenario on a fresh guest."""
import argparse
import json
import os
import sys
import time
from pathlib import Path

from harness import detectors, kbuild
from harness.errors import GuestError, HarnessError


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise HarnessError(f"expected on or off, got {value!r}")
    return value == "on"


def cmd_kernel(args) -> int:
    from harness import kbuild
    kernel = kbuild.build_kernel(args.detector, env_kernel_src(),
                                 flavour=args.flavour)
    print(kernel.bzimage)
    return 0


def cmd_qemu(args) -> int:
    """Build (or reuse) the patched QEMU, or check another binary."""
    from harness import qemu_build
    if args.check:
        q = qemu_build.check(args.check)
        print(f"{q.binary}: QEMU {'.'.join(map(str, q.version))}")
        for name, what in qemu_build.FEATURES.items():
            print(f"  {'yes' if name in q.features else 'no '} {name}: {what}")
        qemu_build.check(args.check, require=True)    # lacking one: an error line
        return 0
    q = qemu_build.resolve(require=True, explicit=env_qemu())
    print(q.binary)
    return 0


# The environment is read here, by the command line, and passed on.
def env_kernel_src() -> str | None:
    """KERNEL_SRC=/path/to/tree: the user's kernel tree (else Debian's)."""
    return os.environ.get("KERNEL_SRC") or None


def env_accel() -> str | None:
    """HARNESS_ACCEL=kvm|tcg: the accelerator, forced (else probed)."""
    return os.environ.get("HARNESS_ACCEL") or None


def env_qemu() -> str | None:
    """QEMU=/path/to/qemu-system-x86_64: guests on that QEMU (else the
    patched build)."""
    return os.environ.get("QEMU") or None


def prepare(detector: str, flavour: str | None = None):
    """Kernel (cached build) and an initramfs with modules built against it."""
    from harness import initramfs
    return initramfs.build_guest(detector, env_kernel_src(), flavour)


def cmd_initramfs(args) -> int:
    _, initrd = prepare(args.detector, args.flavour)
    print(initrd)
    return 0


def cmd_parse(args) -> int:
    from harness import console_events
    path = Path(args.log)
    if not path.is_file():
        raise HarnessError(f"no such log file: {path}")
    events = console_events.parse_file(path)
    try:
        print(console_events.format_events(events, as_json=args.json), flush=True)
    except BrokenPipeError:
        # The reader left (`harness parse LOG | head`): stop quietly, with
        # the status of a process killed by SIGPIPE (128 + 13), as cat does.
        # stdout now points at nothing, so that the flush at exit cannot
        # raise a second BrokenPipeError.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141
    return 0


def cmd_probe_accel(args) -> int:
    from harness import accel
    kernel, initrd = prepare(args.detector)
    for name in ("kvm", "tcg"):
        ok, why = accel.probe(name, kernel.bzimage, initrd)
        print(f"{name}: {'works' if ok else 'unusable'} ({why})")
    print(f"chosen: {accel.choose_accel(kernel.bzimage, initrd, env_accel())}")
    return 0


AXIS_FLAGS = ("cpus", "sockets", "threads", "maxcpus", "memory", "iommu", "apic",
              "comparator", "hpet", "hpet_msi", "hpet_timers", "thresh", "panic",
              "nmi_watchdog", "cmdline", "crash_kernel", "flavour")
SELECT_FLAGS = ("detector", "cpus", "iommu", "apic", "comparator", "flavour", "scenario",
                "case")
# What a run writes (cases.json and pytest.log: what older runs wrote).
OUTPUTS = ("cases", "guests", "results.json", "report.html", "report.ktap",
           "junit.xml", "run.log", "cases.json", "pytest.log")


def _axis_values(key: str, text: str) -> list:
    """'1,2,4' -> [1, 2, 4]; 'on,off' -> [True, False]; for --cmdline the
    whole text is one value."""
    from harness.matrix import AXES, NAMED_AXES, named_value
    if key in NAMED_AXES:          # names: one error line for an unknown one
        return [named_value(key, v) for v in text.split(",")]
    kind = AXES[key][1]
    parts = [text] if key == "cmdline" else text.split(",")
    out = []
    for p in parts:
        if kind is bool:
            out.append(_on_off(p))
        elif kind is int:
            try:
                out.append(int(p))
            except ValueError:
                raise HarnessError(f"--{key.replace('_', '-')} {text}: "
                                   f"expected numbers, e.g. 1,2,4") from None
        else:
            out.append(p)
    return out


def select_cases(args) -> list:
    """The cases a run asks for: a matrix file filtered by the selection
    flags, or one group made of the axes on the command line."""
    from harness import matrix
    if args.matrix:
        extra = [k for k in AXIS_FLAGS if getattr(args, k) is not None
                 and k not in SELECT_FLAGS]
        if extra:
            raise HarnessError(f"--{extra[0].replace('_', '-')} cannot be used with "
                               f"--matrix; select with --detector --cpus --iommu "
                               f"--apic --comparator --flavour --scenario --case")
        cases = matrix.load(Path(args.matrix))
        split = lambda v: v.split(",") if v else None  # noqa: E731
        cases = matrix.select(
            cases, detectors=split(args.detector),
            cpus=_axis_values("cpus", args.cpus) if args.cpus else None,
            iommu=_axis_values("iommu", args.iommu) if args.iommu else None,
            apic=_axis_values("apic", args.apic) if args.apic else None,
            comparator=_axis_values("comparator", args.comparator)
            if args.comparator else None,
            flavours=_axis_values("flavour", args.flavour) if args.flavour else None,
            scenarios=[s.split("@")[0] for s in split(args.scenario)]
            if args.scenario else None,
            ids=split(args.case))
        if not cases:
            raise HarnessError(f"no case of {args.matrix} matches the selection")
        return cases
    if not args.scenario:
        raise HarnessError("say what to run: --scenario NAME[@CPUS],... or --matrix FILE")
    if args.case:
        raise HarnessError("--case selects from a matrix file: add --matrix FILE")
    group = {"detector": (args.detector or kbuild.DEFAULT_DETECTOR).split(","),
             "scenarios": args.scenario.split(",")}
    for key in AXIS_FLAGS:
        if getattr(args, key) is not None:
            group[key] = _axis_values(key, getattr(args, key))
    group.setdefault("cpus", [2])
    cases = matrix.name_cases(matrix.expand_group("command line", group))
    if not cases:
        raise HarnessError("the selection has no case (a scenario that needs "
                           "two CPUs on one CPU?)")
    return cases


def _clear_outputs(out: Path) -> None:
    """Only what a run writes: a user's own files in --out stay."""
    import shutil
    for name in OUTPUTS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def default_jobs() -> int:
    """Guests at once. Under TCG every vCPU is a host thread: half the host
    cores keeps one guest's timing from being another guest's noise."""
    return max(1, (os.cpu_count() or 1) // 2)


def resolve_run_qemu() -> str:
    """The QEMU a run's guests use: QEMU=/path as given (any QEMU >= 7.2;
    cases needing what it lacks are skipped by name), else the patched
    build (cached by the hash of its inputs; built now if missing, with
    every patched feature checked)."""
    explicit = env_qemu()
    if explicit:
        import shutil
        return shutil.which(explicit) or explicit
    from harness import qemu_build
    return str(qemu_build.build_qemu().binary)


class BuildFailed(HarnessError):
    """With --bisect: the kernel (or our modules against it) does not build,
    which `git bisect run` takes as "skip this commit"."""

    exit_code = 125


def _scenario_arg(text: str) -> tuple[str, str, int | float]:
    """--scenario-arg NAME.KEY=NUMBER, split and its number read."""
    name, dot, rest = text.partition(".")
    key, eq, value = rest.partition("=")
    if not (dot and eq and name and key):
        raise HarnessError(f"--scenario-arg {text}: expected NAME.KEY=NUMBER, "
                           "e.g. boundary-sweep.per_length=4")
    try:
        number = int(value) if value.lstrip("-").isdigit() else float(value)
    except ValueError:
        raise HarnessError(f"--scenario-arg {text}: {value!r} is not a number") from None
    return name, key, number


def _scenario_args(args) -> dict:
    """The matrix file's [scenario_args], then --scenario-arg and
    --soak-seconds over them (checked by runner.RunRequest)."""
    from harness import matrix
    got = {k: dict(v) for k, v in matrix.scenario_args(Path(args.matrix)).items()} \
        if args.matrix else {}
    for text in args.scenario_arg or ():
        name, key, number = _scenario_arg(text)
        got.setdefault(name, {})[key] = number
    if args.soak_seconds:
        got.setdefault("soak", {})["seconds"] = args.soak_seconds
    return got


def cmd_run(args) -> int:
    """Select the cases, build their kernels, run them (harness.runner) and
    say how it went: one code path for `make test`, `make nightly` and a
    single reproduced case."""
    import dataclasses
    from harness import bench, runner
    from harness.qemu import check_qemu, describe_qemu
    from harness.records import Outcome
    cases = select_cases(args)
    if args.soak_seconds is not None and not args.soak_seconds > 0:
        raise HarnessError(f"--soak-seconds {args.soak_seconds:g}: must be more than 0")
    kernel_src = env_kernel_src()
    request = runner.RunRequest(
        tuple(cases), Path(args.out).resolve(), jobs=args.jobs or default_jobs(),
        retries=args.retries, kernel_src=kernel_src,
        matrix=args.matrix or "command line", progress=args.progress,
        command="python -m harness run " + " ".join(sys.argv[2:]),
        scenario_args=_scenario_args(args))
    if args.bisect:                      # a tree that is no kernel is bad input
        for d, flavour in request.kernels:
            kbuild.kernel_key(detectors.get(d).kernel, kernel_src, flavour)
    if env_qemu():                       # bad input before any work
        check_qemu(resolve_run_qemu())
    out = request.out
    # Before anything else: how many cases and how long, from the previous
    # run's results.json in --out if there is one.
    model = bench.cost_model(Path(args.estimate_from) if args.estimate_from
                             else out / "results.json", required=bool(args.estimate_from))
    print(f"harness: {len(cases)} cases of {request.matrix}: "
          f"{bench.estimate(cases, model, request.jobs).line()}", file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    _clear_outputs(out)
    built = {}
    for k in request.kernels:            # build before the clock starts
        try:
            built.update(runner.build([k], kernel_src))
        except HarnessError as e:
            if not args.bisect:
                raise
            raise BuildFailed(f"the {detectors.with_flavour(*k)} kernel does not build (exit 125, "
                              f"git bisect: skip): {e}") from None
    qemu = resolve_run_qemu()            # the patched build, cached, after the kernels
    check_qemu(qemu)
    print(f"harness: QEMU {describe_qemu(qemu)}", file=sys.stderr, flush=True)
    request = dataclasses.replace(request, qemu=qemu)
    print(f"harness: {len(cases)} cases, {request.jobs} at a time; log in "
          f"{out / 'run.log'}", file=sys.stderr, flush=True)
    result = runner.run(request, built, env_accel())
    sys.stdout.write((out / "report.ktap").read_text())
    print(f"harness: {', '.join(f'{n} {o}' for o, n in result.counts.items())} in "
          f"{result.summary.meta['wall_s'] / 60:.1f} min; report {out / 'report.html'}",
          file=sys.stderr)
    for c in result.records:
        if c.outcome == Outcome.SKIP:
            print(f"harness: SKIP {c.id}: {c.reason}", file=sys.stderr)
    for c in result.failures():
        tail = "\n".join(c.console_tail.splitlines()[-25:])
        print(f"harness: {c.outcome.upper()} {c.id}: {c.reason}\n"
              f"  reproduce: {c.reproduce}\n  artifacts: {out / c.artifacts}\n"
              f"  console tail:\n{tail}", file=sys.stderr)
    return result.exit_status


def _int_list(flag: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise HarnessError(f"{flag} {text}: expected numbers, e.g. 1,2") from None
    if any(v < 1 for v in values):
        raise HarnessError(f"{flag} {text}: every value must be at least 1")
    return values


def cmd_bench(args) -> int:
    from harness import bench
    from harness.machine import MachineSpec
    cpu_counts, jobs = _int_list("--cpus", args.cpus), _int_list("--jobs", args.jobs)
    for c in cpu_counts:
        MachineSpec(cpus=c).validate()
    # Bad input before any work: the files to read must be what they claim.
    previous = bench.load_bench(Path(args.previous)) if args.previous else None
    for path in (args.smoke_results, args.nightly_results):
        if path:
            bench.load_results(Path(path))
    from harness import qemu_build
    from harness.qemu import check_qemu
    qemus = {}
    for item in filter(None, args.qemu.split(",")):
        label, _, binary = item.rpartition("=")
        if item != "default" and not Path(binary).is_file():
            raise HarnessError(f"--qemu {item}: {binary} does not exist")
        binary = resolve_run_qemu() if item == "default" else binary
        check_qemu(binary)
        q = qemu_build.check(binary)
        qemus[label or "qemu-" + ".".join(map(str, q.version))
              + ("+patches" if q.features else "")] = binary
    kernel, initrd = prepare(args.detector)
    result = bench.run(args.detector, cpu_counts, args.boots, jobs, Path(args.out),
                       kernel, initrd, smoke=args.smoke,
                       smoke_results=args.smoke_results and Path(args.smoke_results),
                       nightly_results=args.nightly_results and Path(args.nightly_results),
                       qemus=qemus, kernel_src=env_kernel_src(), accel=env_accel())
    print(result.to_json())
    if previous is not None:
        print(bench.side_by_side(previous, result.to_dict(), args.previous,
                                 str(Path(args.out) / "bench.json")))
    return 0


STOCK_QEMU = "/usr/bin/qemu-system-x86_64"      # Debian's


def boot_spec(args):
    """The one machine the axis flags describe, validated as a matrix is."""
    from harness import matrix
    group = {"detector": args.detector, "scenarios": ["boot"]}
    for key in AXIS_FLAGS:
        if getattr(args, key) is not None:
            values = _axis_values(key, getattr(args, key))
            if len(values) != 1:
                raise HarnessError(f"--{key.replace('_', '-')} {getattr(args, key)}: "
                                   f"boot takes one machine, one value")
            group[key] = values
    group["cmdline"] = [" ".join(filter(None, [args.cmdline, "harness.console_shell=1",
                                               "harness.ssh=1" if args.ssh else ""]))]
    return matrix.expand_group("command line", group)[0].spec


def cmd_boot(args) -> int:
    from harness import accel, elfcheck, interactive
    from harness.qemu import Guest, check_qemu
    spec = boot_spec(args)
    qemu_bin = resolve_run_qemu()
    check_qemu(qemu_bin)
    image = Path(args.kernel) if args.kernel else None
    if image is not None and not image.is_file():
        raise HarnessError(f"kernel image {image} does not exist")
    kernel, initrd = prepare(args.detector, spec.flavour)
    if image is not None:
        # Our modules go in the initramfs: the kernel must be the one they
        # were built for, or it refuses them and hld-lock does nothing.
        version = elfcheck.bzimage_version(image)
        if not version.startswith(kernel.release + " "):
            raise HarnessError(f"{image} is kernel {version.split()[0]}, but the "
                               f"initramfs modules are built for {kernel.release} "
                               f"(build that tree with KERNEL_SRC= instead)")
    image = image or kernel.bzimage
    workdir = Path(args.out) / f"boot-{spec.label()}-{time.strftime('%Y%m%d-%H%M%S')}"
    extra = ()
    chosen = accel.choose_accel(image, initrd, env_accel())
    if args.ssh:
        from harness import ssh
        workdir.mkdir(parents=True, exist_ok=True)
        port = ssh.free_port()
        initrd = ssh.join_initrd(initrd, ssh.prepare(workdir, port),
                                 workdir / "initrd-ssh.cpio.gz")
        extra = tuple(ssh.qemu_args(port))
    with Guest(spec, image, initrd, workdir, chosen, qemu=qemu_bin,
               interactive=True, gdb_port=args.gdb, extra_args=extra) as g:
        g.wait_booted(timeout=60)
        interactive.hand_over(g, kernel.vmlinux)
    print(f"harness: guest shut down; console log {g.console.path}", file=sys.stderr)
    return 0


def cmd_qmp(args) -> int:
    from harness import interactive
    cmdline = Path(args.guest) / "qemu-cmdline.txt"
    if args.qmp_command == "cpu-add" and cmdline.is_file() and \
            "-accel tcg" in cmdline.read_text():
        # Measured on 6.12: Linux counts QEMU's not-yet-present CPUs as
        # hot-pluggable only under a hypervisor it recognises, and under
        # TCG it recognises none.
        print("harness: warning: under TCG the guest kernel cannot use a hot-added CPU "
              "('ACPI: Unable to map lapic'), and with nmi_watchdog=hpet the detector's "
              "all-but-self NMI then reaches that CPU and QEMU resets the machine",
              file=sys.stderr)
    print(json.dumps(interactive.qmp(Path(args.guest), args.qmp_command), indent=1))
    return 0


def _guest_ssh(args):
    from harness import ssh
    return ssh.GuestSSH(Path(args.guest)).connect(args.timeout)


def cmd_ssh(args) -> int:
    from harness import interactive
    command = args.remote_command
    if command and command[0] == "--":
        command = command[1:]
    with _guest_ssh(args) as conn:
        if command:
            return conn.run(" ".join(command), timeout=args.timeout)
        chan = conn.shell()
        print("harness: ssh shell; exit or Ctrl-] leaves", file=sys.stderr)
        interactive.terminal(chan)
        if not chan.eof_received:
            return 0                      # Ctrl-]: we left, the shell did not end
        chan.status_event.wait(5)         # the exit status comes with the EOF
        return max(chan.exit_status, 0)


def cmd_scp(args) -> int:
    from harness import ssh
    src, dst = ssh.split_remote(args.source), ssh.split_remote(args.dest)
    if (src is None) == (dst is None):
        raise HarnessError("scp: exactly one of SOURCE and DEST is guest:PATH")
    if src is None and not Path(args.source).is_file():
        raise HarnessError(f"scp: {args.source} is not a file")
    with _guest_ssh(args) as conn:
        if src is None:
            if dst.endswith("/"):
                dst += Path(args.source).name
            conn.put(Path(args.source), dst)
        else:
            local = Path(args.dest)
            if local.is_dir():
                local = local / Path(src).name
            conn.get(src, local)
    return 0


def cmd_module(args) -> int:
    """Build an out-of-tree module against the guest kernel, in its own
    directory (kbuild's M=), to copy into a running guest."""
    from harness import kbuild
    src = Path(args.dir).resolve()
    if not (src / "Kbuild").is_file() and not (src / "Makefile").is_file():
        raise HarnessError(f"{src} has no Kbuild or Makefile")
    kernel = kbuild.build_kernel(args.detector)
    kbuild.run(["make", "-C", kernel.build_dir, f"M={src}", "modules"])
    for ko in sorted(src.glob("*.ko")):
        print(ko)
    return 0


def cmd_symbolize(args) -> int:
    from harness import kbuild, symbolize
    log = Path(args.log)
    if not log.is_file():
        raise HarnessError(f"console log {log} does not exist")
    text = log.read_text(errors="replace")
    if args.vmlinux:
        vmlinux, modules = Path(args.vmlinux), {}
    else:
        kernel = kbuild.build_kernel(args.detector)
        vmlinux, modules = kernel.vmlinux, dict(kernel.modules)
    modules.update({Path(m).stem: Path(m) for m in args.module})
    wanted = {f.module for f in symbolize.frames(text)}
    objects = {None: symbolize.ObjectSymbols(vmlinux)} if None in wanted else {}
    for name in sorted(m for m in wanted if m in modules):
        objects[name] = symbolize.ObjectSymbols(modules[name])
    lines = symbolize.annotate(text, objects)
    if not lines:
        print(f"harness: no function+0x../0x.. frames in {log}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def cmd_compare(args) -> int:
    from harness import compare
    result = compare.compare([compare.load_run(Path(p)) for p in args.results])
    print(compare.render(result))
    return 0 if result.agree else 1


FLAVOUR_HELP = ("the kernel's flavour: default (the detector's kernel), or "
               + "; ".join(f"{f.name} ({f.what})" for f in detectors.FLAVOURS.values()))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn, help_ in (("kernel", cmd_kernel, "build (or reuse) the guest kernel"),
                            ("initramfs", cmd_initramfs, "build the guest initramfs")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--detector", default=kbuild.DEFAULT_DETECTOR)
        s.add_argument("--flavour", help=FLAVOUR_HELP)
        s.set_defaults(func=fn)
    s = sub.add_parser("qemu", help="build (or reuse) the patched QEMU (qemu/patches) "
                       "and print its path; QEMU=path uses that binary, checked")
    s.add_argument("--check", metavar="BINARY",
                   help="only say which patched features BINARY has (exit 2 if any lacks)")
    s.set_defaults(func=cmd_qemu)
    s = sub.add_parser("parse", help="print the events of a kernel console log")
    s.add_argument("log")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_parse)
    s = sub.add_parser("probe-accel", help="probe KVM and TCG and say which is used")
    s.add_argument("--detector", default=kbuild.DEFAULT_DETECTOR)
    s.set_defaults(func=cmd_probe_accel)
    s = sub.add_parser("run", help="run scenario cases on guests, with reports",
                       description="Run a matrix file (--matrix), filtered by --detector "
                       "--cpus --iommu --scenario --case; or the cases the axis flags "
                       "describe (lists cross: --cpus 1,2,4 --iommu on,off). KTAP goes to "
                       "stdout; reports, logs and artifacts to --out.")
    s.add_argument("--matrix", help="a matrix file, e.g. matrix/nightly.toml")
    s.add_argument("--scenario", help="NAME[@CPUS],... (CPUS: all, first, middle, "
                   "last, spread or a number; default last)")
    s.add_argument("--case", help="case ids from the matrix file, comma separated")
    s.add_argument("--detector", help="hpet, buddy (comma separated)")
    s.add_argument("--cpus", help="vCPU counts, e.g. 1,2,4")
    s.add_argument("--iommu", help="off, described (the HPET in the DMAR; on: the "
                   "same) or undescribed, comma separated")
    s.add_argument("--apic", help="xapic, x2apic (comma separated)")
    s.add_argument("--comparator", help="qemu (a past comparator fires at once), "
                   "hardware (it never fires: hpet.strict-comparator=on)")
    s.add_argument("--flavour", help=FLAVOUR_HELP + " (comma separated)")
    for flag, help_ in (("sockets", "sockets"), ("threads", "threads per core"),
                        ("maxcpus", "CPU slots, for hot-adding CPUs over QMP"),
                        ("memory", "MiB"), ("hpet", "on|off"), ("hpet-msi", "on|off"),
                        ("hpet-timers", "HPET comparators, 3..32"),
                        ("thresh", "watchdog_thresh"), ("panic", "hardlockup_panic on|off"),
                        ("nmi-watchdog", "nmi_watchdog= value, or default"),
                        ("cmdline", "extra kernel command line"),
                        ("crash-kernel", "MiB reserved for a kdump kernel (crashkernel=)")):
        s.add_argument(f"--{flag}", help=help_)
    s.add_argument("--jobs", type=int, default=0,
                   help="guests at once (default: half the host's cores)")
    s.add_argument("--scenario-arg", action="append", metavar="NAME.KEY=NUMBER",
                   help="a keyword for a scenario that takes one, e.g. "
                   "boundary-sweep.per_length=4 (repeatable; over the matrix "
                   "file's [scenario_args])")
    s.add_argument("--soak-seconds", type=float, metavar="S",
                   help="how long the soak scenario watches (default 600)")
    s.add_argument("--retries", type=int, default=1,
                   help="retries of a failed case on a fresh guest (counted as flakes)")
    s.add_argument("--out", default="out", help="output directory")
    s.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar on stderr")
    s.add_argument("--estimate-from", metavar="RESULTS_JSON",
                   help="a previous run's results.json for the time estimate printed "
                   "before the run (default: --out's results.json, if any, else a "
                   "default table)")
    s.add_argument("--bisect", action="store_true",
                   help="for git bisect run: exit 125 (skip) when the kernel does not "
                   "build; 0 pass, 1 fail, 2 bad input")
    s.set_defaults(func=cmd_run)
    s = sub.add_parser("boot", help="boot one guest and hand over its console (Ctrl-] quits)")
    s.add_argument("--detector", default=kbuild.DEFAULT_DETECTOR)
    for flag in ("cpus", "iommu", *(f.replace("_", "-") for f in AXIS_FLAGS
                                    if f not in ("cpus", "iommu"))):
        s.add_argument(f"--{flag}", help="as for run, one value")
    s.add_argument("--kernel", help="boot this bzImage (same release as the modules)")
    s.add_argument("--gdb", type=int, metavar="PORT", help="gdb stub on 127.0.0.1:PORT")
    s.add_argument("--ssh", action="store_true",
                   help="an SSH server in the guest, on a port of 127.0.0.1")
    s.add_argument("--out", default="out/boot")
    s.set_defaults(func=cmd_boot)
    s = sub.add_parser("ssh", help="a shell or COMMAND in a guest booted with --ssh")
    s.add_argument("--guest", required=True, help="the guest's directory (boot prints it)")
    s.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the guest's SSH server, and for COMMAND")
    s.add_argument("remote_command", nargs=argparse.REMAINDER, metavar="COMMAND")
    s.set_defaults(func=cmd_ssh)
    s = sub.add_parser("scp", help="copy a file into (DEST guest:PATH) or out of "
                       "(SOURCE guest:PATH) a guest booted with --ssh")
    s.add_argument("--guest", required=True, help="the guest's directory (boot prints it)")
    s.add_argument("--timeout", type=float, default=60.0)
    s.add_argument("source")
    s.add_argument("dest")
    s.set_defaults(func=cmd_scp)
    s = sub.add_parser("symbolize", help="file:line for the function+0x../0x.. frames of "
                       "a console log (module frames; vmlinux ones need debug info)")
    s.add_argument("log")
    s.add_argument("--detector", default=kbuild.DEFAULT_DETECTOR,
                   help="whose kernel and modules (default: the cached build)")
    s.add_argument("--vmlinux", help="this vmlinux instead")
    s.add_argument("--module", action="append", default=[], metavar="KO",
                   help="a module's .ko (repeatable)")
    s.set_defaults(func=cmd_symbolize)
    s = sub.add_parser("compare", help="do runs agree? verdicts per case across "
                       "results.json files (exit 1 if any differs or flaked)")
    s.add_argument("results", nargs="+", metavar="RESULTS_JSON")
    s.set_defaults(func=cmd_compare)
    s = sub.add_parser("module", help="build an out-of-tree module against the guest kernel")
    s.add_argument("--detector", default=kbuild.DEFAULT_DETECTOR)
    s.add_argument("dir", help="the module's directory (with its Kbuild)")
    s.set_defaults(func=cmd_module)
    s = sub.add_parser("qmp", help="a QMP command to a guest started by boot")
    s.add_argument("--guest", required=True, help="the guest's directory (boot prints it)")
    s.add_argument("qmp_command", metavar="COMMAND",
                   help="nmi, cpus, cpu-add, status or quit")
    s.set_defaults(func=cmd_qmp)
    s = sub.add_parser("bench", help="boot time per vCPU count; matrix wall time "
                       "and cases per minute (matrix/bench.toml)")
    s.add_argument("--detector", default=kbuild.DEFAULT_DETECTOR)
    s.add_argument("--cpus", default="1,2,4,8,16", help="vCPU counts to boot")
    s.add_argument("--boots", type=int, default=3, help="boots per vCPU count")
    s.add_argument("--jobs", default="1", help="parallelism levels for the matrix, e.g. 1,2")
    s.add_argument("--previous", metavar="BENCH_JSON",
                   help="a previous bench.json: print both side by side with ratios")
    s.add_argument("--smoke-results", metavar="RESULTS_JSON",
                   help="the smoke tier's numbers from this run instead of running it")
    s.add_argument("--nightly-results", metavar="RESULTS_JSON",
                   help="the nightly tier's numbers from this finished run")
    s.add_argument("--no-smoke", dest="smoke", action="store_false",
                   help="do not run the smoke tier")
    s.add_argument("--qemu", default=f"default,{STOCK_QEMU}" if Path(STOCK_QEMU).is_file()
                   else "default",
                   help="QEMUs to compare on the same boots and bench matrix, comma "
                   "separated: default (QEMU= or the patched build) and [LABEL=]PATH "
                   "(default: %(default)s)")
    s.add_argument("--out", default="out/bench")
    s.set_defaults(func=cmd_bench)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GuestError as e:
        print(f"harness: guest failure: {e}", file=sys.stderr)
        if e.console_tail:
            print("--- console tail ---\n" + e.console_tail, file=sys.stderr)
        return e.exit_code
    except HarnessError as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130
