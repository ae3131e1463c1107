"""The guest's kernel console: QEMU writes it to a file, we tail it.

QEMU's file chardev never blocks the guest and keeps the whole log even if
the harness dies; waiting is polling that file for an event, with a deadline.
"""
import dataclasses
import time
from pathlib import Path
from typing import Callable

from harness import console_events
from harness.console_events import Event

POLL_S = 0.05


class ConsoleLog:
    def __init__(self, path: Path):
        self.path = path
        self._text = ""
        self._offset = 0
        self._events: list[Event] = []
        self._parsed_upto = 0      # characters of _text already parsed

    def refresh(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        if not data:
            return
        self._offset += len(data)
        self._text += data.decode("utf-8", errors="replace")
        # Parse complete lines only, numbering them from the start of the log.
        # A line can complete an earlier event (an oops's CPU comes on the
        # "CPU: N PID:" line after it, an RCU stall's on the next line), and
        # the two may arrive in different reads: parse again from
        # LOOKAHEAD_LINES before the new lines, and replace the events found
        # there.
        end = self._text.rfind("\n") + 1
        if end > self._parsed_upto:
            start = self._parsed_upto
            for _ in range(console_events.LOOKAHEAD_LINES):
                if start == 0:
                    break
                start = self._text.rfind("\n", 0, start - 1) + 1
            first_line = self._text.count("\n", 0, start)
            self._events = [e for e in self._events if e.line <= first_line]
            for ev in console_events.parse_text(self._text[start:end]):
                self._events.append(dataclasses.replace(ev, line=ev.line + first_line))
            self._parsed_upto = end

    @property
    def text(self) -> str:
        self.refresh()
        return self._text

    def events(self, kind: str | None = None) -> list[Event]:
        self.refresh()
        return [e for e in self._events if kind is None or e.kind == kind]

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.text.splitlines()[-lines:])

    def wait_until(self, predicate: Callable[[], bool], deadline: float,
                   alive: Callable[[], bool]) -> bool:
        """Poll until predicate() holds (True), the deadline passes or the
        guest stops being alive (False)."""
        while True:
            self.refresh()
            if predicate():
                return True
            if time.monotonic() >= deadline or not alive():
                self.refresh()
                return predicate()
            time.sleep(POLL_S)
