"""A guest for a person: boot it with the matrix's machine options and hand
over its serial console (a shell, with hld-lock, hld-state and hld-nmis).
Ctrl-] leaves, and the guest is shut down. While it runs, `python -m
harness qmp --guest DIR ...` talks to its second QMP monitor.
"""
import os
import selectors
import socket
import sys
import termios
import time
import tty
from pathlib import Path

from qemu.qmp.legacy import QEMUMonitorProtocol

from harness.agent import connect_unix
from harness.errors import HarnessError
from harness.qemu import Guest

ESCAPE = b"\x1d"    # Ctrl-]


def banner(guest: Guest, vmlinux: Path | None) -> str:
    lines = [f"harness: {guest.spec.label()} is up ({guest.accel}); its console follows.",
             "  hld-lock CPUS [MS] [irqoff|preemptoff]   lock up CPUs (default 8000 ms, irqoff)",
             "  hld-state                               detector sysctls and HPET state",
             "  hld-nmis                                NMI counts per CPU",
             f"  from another terminal: python -m harness qmp --guest {guest.workdir} "
             "nmi|cpus|quit",
             f"  console log: {guest.console.path}",
             "  Ctrl-] shuts the guest down and leaves."]
    if guest.gdb_port:
        lines.insert(-1, f"  gdb: gdb -ex 'target remote 127.0.0.1:{guest.gdb_port}' {vmlinux}")
    return "\n".join(lines)


def hand_over(guest: Guest, vmlinux: Path | None) -> None:
    """Console to the terminal until Ctrl-] (or the guest goes away)."""
    sock = connect_unix("\0" + guest.console_sock, time.monotonic() + 10, "console socket")
    print(banner(guest, vmlinux), flush=True)
    sock.sendall(b"\n")                   # a fresh prompt
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    try:
        if saved is not None:
            tty.setraw(fd)                # keys go to the guest as typed
        _relay(sock, fd)
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        sock.close()


def _relay(sock: socket.socket, fd: int) -> None:
    """Copy both ways until the escape key, end of input, or the guest
    closing the console (poweroff, panic with -no-reboot)."""
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    sel.register(sock, selectors.EVENT_READ)
    out = sys.stdout.buffer
    while True:
        for key, _ in sel.select():
            if key.fileobj is sock:
                data = sock.recv(4096)
                if not data:
                    return
                out.write(data)
                out.flush()
            else:
                data = os.read(fd, 4096)
                if not data:
                    return
                if ESCAPE in data:
                    sock.sendall(data[:data.index(ESCAPE)])
                    out.write(b"\r\n")
                    out.flush()
                    return
                sock.sendall(data)


def qmp(workdir: Path, command: str) -> dict | list:
    """One QMP command on the second monitor of a guest booted by `boot`."""
    sock_file = Path(workdir) / "qmp-socket.txt"
    if not sock_file.is_file():
        raise HarnessError(f"{workdir} is not the directory of a running `harness boot` "
                           f"guest (no qmp-socket.txt)")
    commands = {"nmi": ("inject-nmi", {}), "cpus": ("query-cpus-fast", {}),
                "quit": ("quit", {}), "status": ("query-status", {})}
    if command not in commands:
        raise HarnessError(f"unknown qmp command {command!r}; known: {', '.join(commands)}")
    mon = QEMUMonitorProtocol("\0" + sock_file.read_text().strip())
    try:
        mon.connect()
    except OSError as e:
        raise HarnessError(f"cannot reach the guest's QMP monitor ({e}): has it quit?") \
            from None
    try:
        name, args = commands[command]
        reply = mon.cmd_raw(name, args)
    finally:
        mon.close()
    if "error" in reply:
        raise HarnessError(f"QMP {name}: {reply['error'].get('desc', reply['error'])}")
    return reply.get("return", {})
