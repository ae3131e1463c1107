"""What each detector can and cannot see, stated once.

Scenario verdicts ask here instead of special-casing detectors inline, so a
limitation (the buddy detector has no buddy on one CPU) is asserted as an
expectation rather than skipped.
"""


def hard_lockup_visible(detector: str, cpus: int) -> tuple[bool, str]:
    if detector == "buddy" and cpus < 2:
        return False, ("the buddy detector checks each CPU from its neighbour; "
                       "with one CPU there is none, so a hard lockup goes unreported")
    return True, f"{detector} detector watches every CPU"


def hard_lockup_bound_s(detector: str, thresh: int) -> float:
    """Latest acceptable report after the injection, in seconds.

    buddy: a CPU checks its neighbour every third hrtimer tick (period
    2*thresh/5), and needs two checks without progress: at most about
    3*thresh, plus a thresh of slack for TCG scheduling.
    """
    if detector == "buddy":
        return 4.0 * thresh + 2.0
    return 2.0 * thresh + 1.0


def soft_lockup_bound_s(thresh: int) -> float:
    """The soft lockup threshold is 2*thresh, sampled every 2*thresh/5."""
    return 2.0 * thresh + 2.0 * thresh / 5 + thresh + 2.0
