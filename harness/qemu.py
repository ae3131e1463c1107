"""Run one QEMU guest: start it, watch it, talk to it, and always kill it.

Every QEMU process is registered here and killed when the guest is stopped,
when the harness exits (atexit, SIGTERM, SIGINT; installed when the first
guest starts) and, should the harness itself be killed, by the kernel
through PR_SET_PDEATHSIG.
"""
import atexit
import ctypes
import functools
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from qemu.qmp.legacy import QEMUMonitorProtocol

from harness.agent import Agent
from harness.console import ConsoleLog
from harness.errors import GuestError, HarnessError
from harness.initramfs import with_crash_kernel
from harness.machine import MachineSpec, qemu_argv

_PR_SET_PDEATHSIG = 1
_live: set["Guest"] = set()


def die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def kill_all() -> None:
    for guest in list(_live):
        guest.stop()


def _on_signal(signum, frame):
    kill_all()
    raise SystemExit(128 + signum)


_cleanup_installed = False


def install_cleanup() -> None:
    """Kill every guest at exit and on SIGTERM (SIGINT raises
    KeyboardInterrupt, and the guests' `with` or finally stops them).
    Installed by the first guest that starts, not by importing this module:
    a program that only reads matrices or reports keeps its own handlers."""
    global _cleanup_installed
    if _cleanup_installed:
        return
    _cleanup_installed = True
    atexit.register(kill_all)
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _on_signal)


MIN_QEMU = (7, 2)     # what the harness is tested on (Debian 12)


@functools.lru_cache(maxsize=None)
def version_of(path: str) -> tuple[int, int, int]:
    """What `path --version` says: (major, minor, micro)."""
    try:
        text = subprocess.run([path, "--version"], capture_output=True, text=True,
                              timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HarnessError(f"{path} --version failed: {e}") from None
    m = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", text)
    if m is None:
        raise HarnessError(f"{path} --version says no version: {text.strip()[:80]!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def check_qemu(qemu: str = "qemu-system-x86_64") -> tuple[int, int]:
    """QEMU present and new enough; its (major, minor)."""
    path = shutil.which(qemu)
    if path is None:
        raise HarnessError(f"{qemu} not found: install qemu-system-x86, or build the "
                           f"patched one (make qemu)")
    version = version_of(path)[:2]
    if version < MIN_QEMU:
        raise HarnessError(f"{path} is QEMU {version[0]}.{version[1]}, too old: the "
                           f"harness needs {MIN_QEMU[0]}.{MIN_QEMU[1]} or newer")
    return version


X2APIC_TCG_QEMU = (9, 0)   # x2APIC and intel-iommu eim=on under TCG


def machine_lacks(spec: MachineSpec, accel: str, qemu: str) -> str | None:
    """Why `qemu` cannot give this machine what it stands for (one line
    naming what the binary lacks), or None when it can."""
    path = shutil.which(qemu) or qemu
    version = version_of(path)
    if spec.x2apic and accel == "tcg" and version[:2] < X2APIC_TCG_QEMU:
        return (f"x2apic needs QEMU {X2APIC_TCG_QEMU[0]}.{X2APIC_TCG_QEMU[1]} or newer "
                f"under TCG (x2APIC, intel-iommu eim=on); {path} is "
                f"{'.'.join(map(str, version))}")
    if spec.qemu_features():
        from harness import qemu_build
        try:
            qemu_build.check(path, require=spec.qemu_features())
        except HarnessError as e:
            return str(e)
    return None


def check_machine_qemu(spec: MachineSpec, accel: str, qemu: str,
                       version: tuple[int, int] | None = None) -> None:
    """A machine that needs more of QEMU than the binary has: refused with
    one line naming what the binary lacks, before it starts."""
    why = machine_lacks(spec, accel, qemu)
    if why:
        raise HarnessError(why)


@functools.lru_cache(maxsize=None)
def describe_qemu(qemu: str) -> str:
    """'path (QEMU x.y.z, qemu/patches: features)' for reports."""
    from harness import qemu_build
    q = qemu_build.check(qemu)
    patched = ", ".join(q.features) or "none"
    return f"{q.binary} (QEMU {'.'.join(map(str, q.version))}; qemu/patches features: {patched})"


def default_qemu() -> str:
    """The QEMU guests run on when no other is given: the patched build
    (cached; harness/qemu_build.py). The command line's QEMU=/path is
    passed as a parameter instead (harness.cli.resolve_run_qemu)."""
    from harness import qemu_build
    return str(qemu_build.build_qemu().binary)


def deadline_scale(spec: MachineSpec, accel: str) -> float:
    """TCG runs every vCPU as a host thread on few host cores: give waits
    room in proportion to the vCPU count; KVM needs far less."""
    if accel == "kvm":
        return 1.0
    return 1.0 + spec.cpus / 4.0


class Guest:
    def __init__(self, spec: MachineSpec, kernel: Path, initrd: Path,
                 workdir: Path, accel: str, qemu: str | None = None,
                 interactive: bool = False, gdb_port: int | None = None,
                 extra_args: tuple[str, ...] = ()):
        self.spec = spec.validate()
        for what, path in (("kernel image", kernel), ("initramfs", initrd)):
            if not Path(path).is_file():
                raise HarnessError(f"{what} {path} does not exist")
        qemu = qemu or default_qemu()
        version = check_qemu(qemu)
        check_machine_qemu(self.spec, accel, qemu, version)
        if self.spec.crash_kernel_mb:
            initrd = with_crash_kernel(kernel, initrd)
        self.kernel, self.initrd, self.accel, self.qemu = kernel, initrd, accel, qemu
        self.interactive, self.gdb_port = interactive, gdb_port
        self.extra_args = tuple(extra_args)
        self.console_sock = self.user_qmp_sock = None
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.console = ConsoleLog(self.workdir / "console.log")
        self.scale = deadline_scale(spec, accel)
        self.proc: subprocess.Popen | None = None
        self.qmp: QEMUMonitorProtocol | None = None
        self.agent: Agent | None = None

    # -- lifecycle -------------------------------------------------------
    def start(self) -> "Guest":
        name = f"hpet-nmi-harness-{os.getpid()}-{secrets.token_hex(6)}"
        if self.interactive:
            self.console_sock, self.user_qmp_sock = f"{name}-console", f"{name}-qmp-user"
            (self.workdir / "qmp-socket.txt").write_text(self.user_qmp_sock + "\n")
        argv = qemu_argv(self.spec, self.accel, self.kernel, self.initrd,
                         self.console.path, f"{name}-agent", f"{name}-qmp", self.qemu,
                         self.console_sock, self.user_qmp_sock, self.gdb_port,
                         self.extra_args)
        (self.workdir / "qemu-cmdline.txt").write_text(shlex.join(argv) + "\n")
        (self.workdir / "kernel-cmdline.txt").write_text(self.spec.kernel_cmdline(self.accel)
                                                          + "\n")
        self.console.path.write_bytes(b"")
        install_cleanup()
        self._stderr = open(self.workdir / "qemu-stderr.txt", "wb")
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=self._stderr, stderr=self._stderr,
                                     preexec_fn=die_with_parent)
        _live.add(self)
        try:
            deadline = time.monotonic() + 10 * self.scale
            self.agent = Agent("\0" + f"{name}-agent", self.workdir / "agent-transcript.txt")
            self.agent.connect(deadline)
            self.qmp = self._connect_qmp("\0" + f"{name}-qmp", deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _connect_qmp(self, address: str, deadline: float) -> QEMUMonitorProtocol:
        while True:
            qmp = QEMUMonitorProtocol(address)
            try:
                qmp.connect()
                return qmp
            except Exception:
                qmp.close()
                if time.monotonic() >= deadline or not self.alive():
                    raise GuestError("QMP socket never became ready",
                                     self.console.tail())
                time.sleep(0.05)

    def wait_booted(self, timeout: float = 30.0) -> float:
        """Wait for the agent's ready banner; return seconds since start."""
        deadline = time.monotonic() + timeout * self.scale
        try:
            self.agent.wait_ready(deadline)
        except GuestError as e:
            raise self.failure(f"boot: {e}") from None
        self.boot_seconds = time.monotonic() - self.t_start
        self.wait_settled(timeout)
        return self.boot_seconds

    # Boot leaves one piece of work running behind /init: the TSC's refined
    # calibration, which registers the "tsc" clocksource about a second later
    # and switches to it with stop_machine(). A lockup injected before that
    # holds every other CPU in stop_machine (soft lockups on all of them),
    # and we once saw the guest stop answering afterwards. Wait until
    # "tsc-early" is gone: then the switch is done (reading the sysfs file
    # takes the same mutex) or the TSC was found unusable.
    SETTLED = ("while grep -qw tsc-early "
               "/sys/devices/system/clocksource/clocksource0/available_clocksource; "
               "do sleep 0.1; done")

    def wait_settled(self, timeout: float = 30.0) -> float:
        t = time.monotonic()
        try:
            self.agent.run(self.SETTLED, timeout * self.scale)
        except GuestError as e:
            raise self.failure(f"boot: clocksource never settled: {e}") from None
        self.settle_seconds = time.monotonic() - t
        return self.settle_seconds

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def failure(self, what: str) -> GuestError:
        """A GuestError saying what went wrong and what the guest last did."""
        self.console.refresh()
        state = self.describe_death() if not self.alive() else "guest still running"
        return GuestError(f"{what} ({state})", self.console.tail(40))

    def describe_death(self) -> str:
        panics = self.console.events("panic")
        if panics:
            return f"guest panicked: {panics[0].title}"
        code = self.proc.poll() if self.proc else None
        if code == 0:
            return "guest reset itself (reboot or triple fault; -no-reboot stopped it)"
        return f"qemu exited with status {code}"

    def run(self, command: str, timeout: float = 20.0):
        try:
            return self.agent.run(command, timeout * self.scale)
        except GuestError as e:
            raise self.failure(str(e)) from None

    def send(self, command: str) -> None:
        """Fire a command at the agent; judge it by the console, not a reply."""
        self.agent.send(command)

    def check(self, command: str, timeout: float = 20.0) -> str:
        reply = self.run(command, timeout)
        if reply.status != 0:
            raise GuestError(f"guest command {command!r} failed with status "
                             f"{reply.status}: {reply.output.strip()[-300:]}",
                             self.console.tail())
        return reply.output

    def stop(self) -> None:
        """QMP quit, then SIGTERM, then SIGKILL; always leaves no process."""
        if self.proc is not None and self.proc.poll() is None:
            if self.qmp is not None:
                try:
                    self.qmp.settimeout(2)
                    self.qmp.cmd("quit")
                except Exception:
                    pass
            for sig, wait in ((None, 3), (signal.SIGTERM, 3), (signal.SIGKILL, 10)):
                if sig is not None:
                    self.proc.send_signal(sig)
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self.qmp is not None:
            try:
                self.qmp.close()
            except Exception:
                pass
            self.qmp = None
        if self.agent is not None:
            self.agent.close()
            self.agent = None
        if getattr(self, "_stderr", None):
            self._stderr.close()
            self._stderr = None
        _live.discard(self)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
