"""The kernel's reports of a defect of its own (harness/debug_checks.py) fail
a case: judged on the console of a real debug-flavour guest that was asked
for such defects (canary-debug-report), and on the same console before it
was asked, which must pass."""
from pathlib import Path

from harness import debug_checks
from harness.console_events import parse_file

LOG = Path(__file__).parent / "logs" / "guest-hpet-debug-2cpu-canary-debug-report.log"


def _split():
    """The events of the boot (up to the agent's banner), and all of them:
    after the banner the guest did nothing but the canary's three writes."""
    events = parse_file(LOG)
    ready = next(e.line for e in events if e.title == "guest agent ready")
    return [e for e in events if e.line <= ready], events, ready


def test_a_debug_kernel_asked_for_defects_fails_the_case():
    _, events, ready = _split()
    found = debug_checks.reports(events)
    # One report of each check the debug flavour turns on, in the order
    # asked, the lockdep one from the module's two mutexes.
    assert [(e.kind, e.title) for e in found] == [
        ("lockdep", "lockdep: possible circular locking dependency"),
        ("invalid_context", "sleeping function called from invalid context"),
        ("invalid_context", "using smp_processor_id() in preemptible"),
    ]
    assert all(e.line > ready for e in found)
    reason = debug_checks.verdict(events)
    assert reason == ("the kernel reported 3 defect(s) of its own: line 292: lockdep: possible "
                      "circular locking dependency; line 389: sleeping function called from "
                      "invalid context; line 430: using smp_processor_id() in preemptible")


def test_the_same_debug_kernel_before_it_was_asked_passes():
    boot, _, _ = _split()
    # A whole boot of the debug kernel: lockdep on, the detector enabled.
    assert any(e.kind == "detector_enabled" for e in boot)
    assert "Lock dependency validator" in LOG.read_text()
    assert debug_checks.verdict(boot) is None


def test_every_kind_the_check_fails_on_is_typed_by_the_parser():
    from harness.console_events import KINDS
    assert set(debug_checks.KINDS) <= set(KINDS)
