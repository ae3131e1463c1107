"""Command line: build, parse console logs, run a scenario on a fresh guest."""
import argparse
import json
import os
import sys
import time
from pathlib import Path

from harness import kbuild
from harness.errors import GuestError, HarnessError


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {value!r}")
    return value == "on"


def cmd_kernel(args) -> int:
    from harness import kbuild
    kernel = kbuild.build_kernel(args.detector, os.environ.get("KERNEL_SRC"))
    print(kernel.bzimage)
    return 0


def prepare(detector: str, out: Path):
    """Kernel (cached build) and an initramfs with modules built against it."""
    from harness import initramfs, kbuild
    kernel = kbuild.build_kernel(detector, os.environ.get("KERNEL_SRC"))
    initrd = initramfs.build_initramfs(kernel, kernel.build_dir.parent)
    return kernel, initrd


def cmd_initramfs(args) -> int:
    _, initrd = prepare(args.detector, Path("."))
    print(initrd)
    return 0


def cmd_parse(args) -> int:
    from harness import console_events
    path = Path(args.log)
    if not path.is_file():
        raise HarnessError(f"no such log file: {path}")
    events = console_events.parse_file(path)
    print(console_events.format_events(events, as_json=args.json))
    return 0


def cmd_probe_accel(args) -> int:
    from harness import accel
    kernel, initrd = prepare(args.detector, Path("."))
    for name in ("kvm", "tcg"):
        ok, why = accel.probe(name, kernel.bzimage, initrd)
        print(f"{name}: {'works' if ok else 'unusable'} ({why})")
    print(f"chosen: {accel.choose_accel(kernel.bzimage, initrd)}")
    return 0


def cmd_run(args) -> int:
    from harness import accel, catalog, expectations
    from harness.machine import MachineSpec
    from harness.qemu import Guest
    run_scenario = catalog.get(args.scenario)
    spec = MachineSpec(cpus=args.cpus, sockets=args.sockets, iommu=args.iommu,
                       watchdog_thresh=args.thresh, hardlockup_panic=args.panic,
                       **expectations.machine_defaults(args.detector)).validate()
    if args.cpu is not None and not 0 <= args.cpu < spec.cpus:
        raise HarnessError(f"--cpu {args.cpu} is outside the guest (cpus 0-{spec.cpus - 1})")
    kernel_img = Path(args.kernel) if args.kernel else None
    if kernel_img is not None and not kernel_img.is_file():
        raise HarnessError(f"kernel image {kernel_img} does not exist")
    out = Path(args.out) / f"{spec.label()}-{args.scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
    kernel, initrd = prepare(args.detector, out)
    image = kernel_img or kernel.bzimage
    with Guest(spec, image, initrd, out, accel.choose_accel(image, initrd)) as g:
        g.wait_booted()
        result = run_scenario(g, args.detector, args.cpu if args.cpu is not None
                              else spec.cpus - 1)
    (out / "result.json").write_text(json.dumps(result.to_dict(), indent=1))
    print(f"{'PASS' if result.passed else 'FAIL'} {result.scenario} [{result.machine}]: "
          f"{result.reason}  (artifacts: {out})")
    return 0 if result.passed else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn, help_ in (("kernel", cmd_kernel, "build (or reuse) the guest kernel"),
                            ("initramfs", cmd_initramfs, "build the guest initramfs")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--detector", default=kbuild.DEFAULT_DETECTOR)
        s.set_defaults(func=fn)
    s = sub.add_parser("parse", help="print the events of a kernel console log")
    s.add_argument("log")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_parse)
    s = sub.add_parser("probe-accel", help="probe KVM and TCG and say which is used")
    s.add_argument("--detector", default=kbuild.DEFAULT_DETECTOR)
    s.set_defaults(func=cmd_probe_accel)
    s = sub.add_parser("run", help="boot a fresh guest and run one scenario")
    s.add_argument("--scenario", required=True)
    s.add_argument("--cpus", type=int, default=2)
    s.add_argument("--sockets", type=int, default=1)
    s.add_argument("--iommu", type=_on_off, default=False, metavar="on|off")
    s.add_argument("--cpu", type=int, help="CPU to lock up (default: the last)")
    s.add_argument("--thresh", type=int, default=2, help="watchdog_thresh")
    s.add_argument("--panic", action="store_true", help="hardlockup_panic=1")
    s.add_argument("--detector", default=kbuild.DEFAULT_DETECTOR)
    s.add_argument("--kernel", help="use this bzImage instead of the built one")
    s.add_argument("--out", default="out", help="artifacts directory")
    s.set_defaults(func=cmd_run)
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
