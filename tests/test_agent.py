"""The serial agent on a real guest: requests survive what the guest does
between and during them."""
import time

import pytest

from harness import expectations
from harness.machine import MachineSpec


@pytest.fixture
def guest(pool, detector):
    return pool.get(detector, MachineSpec(cpus=1, **expectations.machine_defaults(detector)))


def test_request_survives_orphan_exit_mid_line(guest):
    """An orphaned background job exits while a request is half-way down
    the wire. When the agent was PID 1 it got that SIGCHLD, busybox
    restarted its "read" and the first half of the line was lost (a CI run
    hung on it after a test_lockup injection)."""
    guest.check("sh -c '(sleep 1; echo harness-orphan-exited > /dev/kmsg) &'")
    child = guest.agent.child
    child.send("half1 echo split-")
    deadline = time.monotonic() + 20 * guest.scale
    assert guest.console.wait_until(
        lambda: "harness-orphan-exited" in guest.console.text, deadline, guest.alive)
    child.send("request-ok\n")
    child.expect(r"@@BEGIN half1\r?\n", timeout=20 * guest.scale)
    child.expect(r"@@END half1 0\r?\n", timeout=20 * guest.scale)
    assert "split-request-ok" in child.before


def test_agent_is_not_pid1(guest):
    assert guest.check("echo $PPID").strip() != "1"
