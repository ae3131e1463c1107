"""QMP cpu-add on a guest booted by hand, with the HPET detector on.

Under KVM the hot-added CPU must come up when onlined, be monitored by the
detector and have its lockup reported. Under TCG a 6.12 guest refuses the
CPU (it trusts QEMU's hot-pluggable MADT entries only under a hypervisor it
recognises). The vCPU is there all the same, waiting for a startup IPI:
under TCG this test checks that it takes no NMI (QEMU would reset the
machine) and that lockups are still reported, and ends there.
"""
import time

from harness import interactive
from harness.detector_scenarios import observe
from harness.scenarios import BAD_KINDS, LOCKUP_KINDS, hard_lockup
from harness.machine import MachineSpec
from harness.qemu import Guest

REFUSED = "ACPI: Unable to map lapic to logical cpu number"


def test_cpu_hot_add(built, accel, tmp_path):
    kernel, initrd = built
    spec = MachineSpec(cpus=2, maxcpus=3, iommu=True, hpet_msi=True, hpet_timers=4,
                       nmi_watchdog="hpet")
    with Guest(spec, kernel.bzimage, initrd, tmp_path / "guest", accel,
               interactive=True) as g:
        g.wait_booted(timeout=60)
        added = interactive.qmp(g.workdir, "cpu-add")
        assert added["vcpus"] == 3 and added["qom-path"], added
        deadline = time.monotonic() + 30 * g.scale
        appeared = lambda: REFUSED in g.console.text or g.run(  # noqa: E731
            "test -d /sys/devices/system/cpu/cpu2").status == 0
        assert g.console.wait_until(appeared, deadline, g.alive), g.console.tail()
        if REFUSED in g.console.text:
            assert accel == "tcg", "only TCG guests should refuse a hot-added CPU"
            # The vCPU exists, waiting for a startup IPI Linux will never
            # send: no NMI may reach it (QEMU resets the machine on one, as
            # it did with series v2's all-but-self broadcast). Ten periods,
            # then a lockup on CPU 1 must still be reported.
            thresh = spec.watchdog_thresh
            bad = observe(g, 2.0 * thresh, LOCKUP_KINDS + BAD_KINDS)
            assert not bad and g.alive(), g.console.tail()
            assert g.console.text.count("Linux version ") == 1, "the machine was reset"
            r = hard_lockup(g, "hpet", 1)
            assert r.passed, r.reason
            assert g.console.text.count("Linux version ") == 1, "the machine was reset"
            return      # onlining, monitoring and reporting it need KVM
        g.check("echo 1 > /sys/devices/system/cpu/cpu2/online", timeout=60)
        assert g.check("cat /sys/kernel/debug/x86/hpet_hld/monitored_cpus").strip() == "0-2"
        mark = len(g.console.text)
        g.check("hld-lock 2 6000", timeout=60)
        assert g.console.wait_until(
            lambda: "Watchdog detected hard LOCKUP on cpu 2" in g.console.text[mark:],
            time.monotonic() + 30 * g.scale, g.alive), g.console.tail()
