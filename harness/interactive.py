"""A guest for a person: boot it with the matrix's machine options and hand
over its serial console (a shell, with hld-lock, hld-nmi, hld-state and hld-nmis).
Ctrl-] leaves, and the guest is shut down. While it runs, `python -m
harness qmp --guest DIR ...` talks to its second QMP monitor.
"""
import os
import selectors
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
             "  hld-lock CPUS [MS] [irqoff|preemptoff] [quiet]",
             "                                          lock up CPUs (default 8000 ms, irqoff)",
             "  hld-nmi CPUS [N] | hld-nmi CPUS stall MS",
             "                                          unknown NMIs, or CPUs stuck in NMI",
             "  hld-state                               detector sysctls and HPET state",
             "  hld-nmis                                NMI counts per CPU",
             f"  from another terminal: python -m harness qmp --guest {guest.workdir} "
             "nmi|cpus|cpu-add|quit",
             f"  console log: {guest.console.path}",
             "  Ctrl-] shuts the guest down and leaves."]
    if guest.gdb_port:
        lines.insert(-1, f"  gdb: gdb -ex 'target remote 127.0.0.1:{guest.gdb_port}' {vmlinux}")
    if (guest.workdir / "ssh.json").is_file():
        from harness import ssh
        lines[-2:-2] = [
            f"  ssh: python -m harness ssh --guest {guest.workdir} [COMMAND]",
            f"       python -m harness scp --guest {guest.workdir} FILE guest:/tmp/",
            f"       or {ssh.openssh_command(guest.workdir)}"]
    return "\n".join(lines)


def hand_over(guest: Guest, vmlinux: Path | None) -> None:
    """Console to the terminal until Ctrl-] (or the guest goes away)."""
    sock = connect_unix("\0" + guest.console_sock, time.monotonic() + 10, "console socket")
    print(banner(guest, vmlinux), flush=True)
    sock.sendall(b"\n")                   # a fresh prompt
    try:
        terminal(sock)
    finally:
        sock.close()


def terminal(conn) -> None:
    """Our terminal, raw, to conn (a socket, or an SSH channel: anything
    with fileno, recv and sendall) until Ctrl-], end of input or conn
    closing (poweroff, panic with -no-reboot, logout)."""
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    try:
        if saved is not None:
            tty.setraw(fd)                # keys go to the guest as typed
        _relay(conn, fd)
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _relay(conn, fd: int) -> None:
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    sel.register(conn, selectors.EVENT_READ)
    out = sys.stdout.buffer
    while True:
        for key, _ in sel.select():
            if key.fileobj is conn:
                data = conn.recv(4096)
                if not data:
                    return
                out.write(data)
                out.flush()
            else:
                data = os.read(fd, 4096)
                if not data:
                    return
                if ESCAPE in data:
                    conn.sendall(data[:data.index(ESCAPE)])
                    out.write(b"\r\n")
                    out.flush()
                    return
                conn.sendall(data)


def qmp(workdir: Path, command: str) -> dict | list:
    """One QMP command on the second monitor of a guest booted by `boot`."""
    sock_file = Path(workdir) / "qmp-socket.txt"
    if not sock_file.is_file():
        raise HarnessError(f"{workdir} is not the directory of a running `harness boot` "
                           f"guest (no qmp-socket.txt)")
    commands = {"nmi": lambda mon: _cmd(mon, "inject-nmi", {}),
                "cpus": lambda mon: _cmd(mon, "query-cpus-fast", {}),
                "quit": lambda mon: _cmd(mon, "quit", {}),
                "status": lambda mon: _cmd(mon, "query-status", {}),
                "cpu-add": _cpu_add}
    if command not in commands:
        raise HarnessError(f"unknown qmp command {command!r}; known: {', '.join(commands)}")
    mon = QEMUMonitorProtocol("\0" + sock_file.read_text().strip())
    try:
        mon.connect()
    except OSError as e:
        raise HarnessError(f"cannot reach the guest's QMP monitor ({e}): has it quit?") \
            from None
    try:
        return commands[command](mon)
    finally:
        mon.close()


def _cmd(mon: QEMUMonitorProtocol, name: str, args: dict):
    reply = mon.cmd_raw(name, args)
    if "error" in reply:
        raise HarnessError(f"QMP {name}: {reply['error'].get('desc', reply['error'])}")
    return reply.get("return", {})


def _cpu_add(mon: QEMUMonitorProtocol) -> dict:
    """Plug a vCPU into the first empty slot (the machine needs maxcpus >
    cpus). The guest sees an ACPI hot-add and registers the CPU offline."""
    free = [c for c in _cmd(mon, "query-hotpluggable-cpus", {}) if "qom-path" not in c]
    if not free:
        raise HarnessError("no free CPU slot: boot with --maxcpus larger than --cpus")
    slot = min(free, key=lambda c: sorted(c["props"].items()))
    props = slot["props"]
    dev_id = "hotcpu-" + "-".join(str(props[k]) for k in sorted(props))
    _cmd(mon, "device_add", {"driver": slot["type"], "id": dev_id, **props})
    cpus = _cmd(mon, "query-cpus-fast", {})
    added = [c for c in cpus if c.get("props") == props]
    return {"added": dev_id, "props": props,
            "qom-path": added[0]["qom-path"] if added else None,
            "vcpus": len(cpus)}
