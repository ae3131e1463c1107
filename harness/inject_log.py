"""What the lockup_inject module says it did: its debugfs `log`.

A quiet injection prints nothing on the locked CPU (printing to the serial
console would touch the watchdog), so its times come from here: the module
records every lockup and every NMI it sent with local_clock(), the clock
of the printk timestamps, so they line up with the console's events.

    lockup <seq> <cpu> <mode> <ms> <start ns> <end ns>
    nmi <seq> <cpu> <sent ns>
"""
from dataclasses import dataclass

from harness.errors import HarnessError

LOG = "/sys/kernel/debug/lockup_inject/log"


@dataclass(frozen=True)
class Lockup:
    seq: int
    cpu: int
    mode: str
    ms: int           # asked for
    start: float      # seconds, printk clock
    end: float

    @property
    def seconds(self) -> float:
        """How long it really lasted."""
        return self.end - self.start


@dataclass(frozen=True)
class NmiSent:
    seq: int
    cpu: int
    time: float


def parse(text: str) -> list:
    """Every record of the log, in order; a line that is not one is an error."""
    records: list = []
    for n, line in enumerate(text.splitlines(), 1):
        f = line.split()
        try:
            if f and f[0] == "lockup" and len(f) == 7:
                records.append(Lockup(int(f[1]), int(f[2]), f[3], int(f[4]),
                                      int(f[5]) / 1e9, int(f[6]) / 1e9))
                continue
            if f and f[0] == "nmi" and len(f) == 4:
                records.append(NmiSent(int(f[1]), int(f[2]), int(f[3]) / 1e9))
                continue
        except ValueError:
            pass
        raise HarnessError(f"lockup_inject log line {n} is not a record: {line!r}")
    return records


def after(records: list, seq: int) -> list:
    """The records written after the one numbered `seq` (-1: all)."""
    return [r for r in records if r.seq > seq]
