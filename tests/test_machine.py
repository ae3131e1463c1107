"""MachineSpec -> QEMU command line: the defaults give exactly the command
line the matrix has always used; the fields for the patched QEMU add their
options only when asked for."""
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.machine import MachineSpec, qemu_argv


def argv(spec: MachineSpec, accel: str = "tcg") -> list[str]:
    return qemu_argv(spec, accel, Path("/k"), Path("/i"), Path("/c.log"), "ag", "qm")


# The command line before x2apic/iommu_hpet/hpet_strict_comparator existed,
# but for tsc=reliable and no_timer_check, which TCG guests have had since
# (see MachineSpec.kernel_cmdline).
TODAY = ["qemu-system-x86_64", "-machine", "q35,hpet=on", "-accel", "tcg", "-cpu", "max",
         "-smp", "2,maxcpus=2,sockets=1,cores=2,threads=1", "-m", "512",
         "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
         "-global", "hpet.msi=off", "-global", "hpet.timers=3",
         "-global", "ICH9-LPC.disable_s3=0",
         "-chardev", "file,id=con0,path=/c.log", "-serial", "chardev:con0",
         "-chardev", "socket,id=agent0,path=ag,abstract=on,server=on,wait=off",
         "-serial", "chardev:agent0",
         "-chardev", "socket,id=qmp0,path=qm,abstract=on,server=on,wait=off",
         "-mon", "chardev=qmp0,mode=control", "-kernel", "/k", "-initrd", "/i",
         "-append", "console=ttyS0,115200 loglevel=7 panic=-1 watchdog_thresh=2 "
                    "sysctl.kernel.hardlockup_panic=0 tsc=reliable no_timer_check"]


def test_defaults_give_todays_command_line():
    assert argv(MachineSpec()) == TODAY
    assert argv(MachineSpec(iommu=True)) == TODAY + ["-device", "intel-iommu,intremap=on"]
    assert MachineSpec(iommu=True).label() == "2cpu-iommu"
    assert MachineSpec().qemu_features() == ()


def test_x2apic_undescribed_hpet_and_strict_comparator():
    spec = MachineSpec(iommu=True, x2apic=True, iommu_hpet=False,
                       hpet_strict_comparator=True).validate()
    a = argv(spec)
    assert a[a.index("-cpu") + 1] == "max,+x2apic"
    assert a[-2:] == ["-device", "intel-iommu,intremap=on,eim=on,hpet-scope=off"]
    assert "hpet.strict-comparator=on" in a
    assert spec.label() == "2cpu-iommu-x2apic-hpet-undescribed-strict-cmp"
    assert spec.qemu_features() == ("hpet-remap", "cfi", "hpet-scope", "strict-comparator")
    assert (spec.apic, spec.iommu_mode, spec.comparator) == ("x2apic", "undescribed", "hardware")
    assert MachineSpec(iommu=True).qemu_features() == ("hpet-remap", "cfi")
    assert argv(MachineSpec(x2apic=True), "kvm")[6] == "host,+x2apic"


def test_undescribed_hpet_needs_an_iommu():
    with pytest.raises(HarnessError, match="iommu_hpet=off .* needs iommu=on"):
        MachineSpec(iommu_hpet=False).validate()


def test_tcg_guests_trust_their_tsc_unless_the_machine_says_otherwise():
    from harness.machine import MachineSpec
    spec = MachineSpec(cpus=2)
    assert "tsc=reliable" in spec.kernel_cmdline("tcg").split()
    assert "tsc=reliable" not in spec.kernel_cmdline("kvm").split()
    unstable = spec.with_(cmdline_extra=("tsc=unstable",))
    assert "tsc=reliable" not in unstable.kernel_cmdline("tcg").split()
    assert "tsc=unstable" in unstable.kernel_cmdline("tcg").split()


def test_tcg_guests_skip_the_boot_timer_check_as_other_hypervisors_guests_do():
    spec = MachineSpec(cpus=2)
    assert "no_timer_check" in spec.kernel_cmdline("tcg").split()
    assert "no_timer_check" not in spec.kernel_cmdline("kvm").split()   # kvm.c sets it
