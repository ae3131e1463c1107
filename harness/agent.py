"""Talk to the guest agent over its own UART (a unix socket on the host).

Requests are "<id> <command>"; replies are framed by "@@BEGIN <id>" and
"@@END <id> <status>" with a fresh id per request, so neither stale output
nor anything else on the line can be mistaken for a reply.
"""
import itertools
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pexpect.fdpexpect

from harness.errors import GuestError


@dataclass(frozen=True)
class Reply:
    command: str
    status: int
    output: str


def connect_unix(address: str, deadline: float, what: str) -> socket.socket:
    """QEMU creates its server sockets when it starts: retry until it has."""
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(address)
            return s
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            if time.monotonic() >= deadline:
                raise GuestError(f"{what} {address!r} never appeared")
            time.sleep(0.05)


class Agent:
    def __init__(self, sock_path: str, transcript: Path):
        self.sock_path = sock_path
        self.transcript_path = transcript
        self.sock: socket.socket | None = None
        self.child = None
        self._ids = itertools.count(1)

    def connect(self, deadline: float) -> None:
        s = connect_unix(self.sock_path, deadline, "agent socket")
        self.sock = s
        self._log = open(self.transcript_path, "a", encoding="utf-8", errors="replace")
        self.child = pexpect.fdpexpect.fdspawn(s.fileno(), encoding="utf-8",
                                               codec_errors="replace", logfile=self._log)

    def wait_ready(self, deadline: float) -> None:
        self._expect(re.escape("@@READY"), deadline, "agent ready banner")

    def _expect(self, pattern: str, deadline: float, what: str):
        timeout = max(0.0, deadline - time.monotonic())
        try:
            self.child.expect(pattern, timeout=timeout)
        except pexpect.TIMEOUT:
            raise GuestError(f"agent: no {what} within {timeout:.0f} s")
        except pexpect.EOF:
            raise GuestError(f"agent: channel closed while waiting for {what}")
        return self.child.match

    def send(self, command: str) -> str:
        """Send a command without waiting for its reply; return its id.

        For injections: the agent's shell may sit on the very CPU being
        locked up, so its reply can come late or, if the guest panics,
        never. A later request skips the stale reply by its id.
        """
        if "\n" in command:
            raise ValueError("agent commands are single lines")
        rid = f"r{next(self._ids)}x{int(time.monotonic() * 1000) % 100000}"
        self.child.send(f"{rid} {command}\n")
        return rid

    def run(self, command: str, timeout: float) -> Reply:
        rid = self.send(command)
        deadline = time.monotonic() + timeout
        self._expect(rf"@@BEGIN {rid}\r?\n", deadline, f"reply to {command!r}")
        m = self._expect(rf"@@END {rid} (\d+)\r?\n", deadline,
                         f"end of reply to {command!r}")
        output = self.child.before.replace("\r\n", "\n")
        return Reply(command, int(m.group(1)), output)

    def close(self) -> None:
        if self.sock:
            try:
                self.sock.close()
            finally:
                self.sock = None
                self._log.close()
