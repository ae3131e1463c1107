"""What the kernel's own checking reports: lockdep (and PROVE_RCU's
"suspicious RCU usage"), DEBUG_ATOMIC_SLEEP, DEBUG_PREEMPT, KASAN and
WARN(). A kernel that prints one of these has found a defect in itself.

No scenario expects one, so a report anywhere in a guest's console fails
the case that ran on it, whatever its scenario judged (case_runner), and
the case is not retried: a lock order inversion or a sleep in atomic
context is a defect of the kernel, not a flake of the emulator. The
debug flavour (kernel-config/debug.config) is the kernel that has these
checks; on the plain kernel only WARN() and a few always-on checks
("scheduling while atomic") can print anything.

Scenarios judge the console after their own start mark; this reads the
guest's whole console, so what falls outside their windows counts too:
the suspend and resume of suspend-resume, the sysctl writes of
runtime-changes, the CPU hotplug of handling-cpu-hotplug, the NMI stall
of nmi-stall, a report printed between two cases. A failing case retires
its guest, so every report on a live guest is new since its last case.
"""
import time

from harness.console_events import Event, describe
from harness.qemu import Guest
from harness.scenarios import Result

# console_events kinds: lockdep (its reports, spinlock debugging, RCU
# usage), invalid_context (atomic sleep, scheduling while atomic, per-CPU
# access from preemptible code, preempt count leaks), kasan, kcsan (a data
# race, on the kcsan flavour), warning.
KINDS = ("lockdep", "invalid_context", "kasan", "kcsan", "warning")


def reports(events) -> list[Event]:
    """The kernel's reports of a defect in itself, in console order."""
    return [e for e in events if e.kind in KINDS]


def verdict(events) -> str | None:
    """Why a case on this console fails, or None: nothing reported."""
    found = reports(events)
    if not found:
        return None
    return (f"the kernel reported {len(found)} defect(s) of its own: "
            f"{describe(found)}")


# guest/modules/lockup_inject: each word asks for one defect, done by the
# writing task, which then says "lockup_inject: defect WORD done".
DEFECT = "/sys/kernel/debug/lockup_inject/defect"
CANARY_DEFECTS = ("lock-inversion", "sleep-in-atomic", "smp-processor-id-preemptible")


def canary(guest: Guest, detector: str) -> Result:
    """Deliberately wrong, as canary-wrong-cpu is: ask the kernel for a lock
    order inversion (lockdep), a mutex taken under a spinlock
    (DEBUG_ATOMIC_SLEEP) and smp_processor_id() in preemptible code
    (DEBUG_PREEMPT). The scenario itself passes; on a debug flavour kernel
    the reports must fail the case. The plain kernel checks none of it."""
    label = guest.spec.label()
    for word in CANARY_DEFECTS:
        offset = len(guest.console.text)
        guest.check(f"echo {word} > {DEFECT}")
        done = f"lockup_inject: defect {word} done"
        if not guest.console.wait_until(lambda d=done, o=offset: d in guest.console.text[o:],
                                        time.monotonic() + 10 * guest.scale, guest.alive):
            raise guest.failure(f"no '{done}' on the console")
    return Result("canary-debug-report", label, True,
                  f"asked the kernel for {', '.join(CANARY_DEFECTS)}: a debug "
                  "kernel must report them and fail this case")
