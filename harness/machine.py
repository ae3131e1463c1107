"""A guest machine spec and the QEMU command line it turns into.

The agent and QMP sockets are abstract unix sockets (named, not files), so a
harness killed with SIGKILL leaves nothing behind on disk.
"""
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness import detectors
from harness.accel import cpu_model
from harness.errors import HarnessError

MAX_TCG_CPUS = 255   # without x2APIC (none under TCG 7.2), APIC IDs stop at 254

# The matrix's named axes: each value is the MachineSpec fields it sets.
APIC_MODES = {
    "xapic": {"x2apic": False},
    "x2apic": {"x2apic": True},               # -cpu ...,+x2apic; with the IOMMU eim=on
}
IOMMU_MODES = {
    "off": {"iommu": False, "iommu_hpet": True},
    # intel-iommu,intremap=on, the DMAR with the HPET's device scope (as
    # firmware should describe it; only the patched QEMU has one).
    "described": {"iommu": True, "iommu_hpet": True},
    # ... and hpet-scope=off: firmware that leaves the HPET out.
    "undescribed": {"iommu": True, "iommu_hpet": False},
}
COMPARATOR_RULES = {
    "qemu": {"hpet_strict_comparator": False},      # a past comparator fires at once
    "hardware": {"hpet_strict_comparator": True},   # ... never (hpet.strict-comparator=on)
}
# The kernel the guest boots: the detector's plain kernel, or a flavour of
# it (detectors.FLAVOURS: its config fragments on top).
KERNEL_FLAVOURS = {"default": {"flavour": None},
                   **{name: {"flavour": name} for name in detectors.FLAVOURS}}


@dataclass(frozen=True)
class MachineSpec:
    cpus: int = 2
    sockets: int = 1
    threads: int = 1
    maxcpus: int = 0               # > cpus: room to hot-add CPUs (QMP device_add)
    memory_mb: int = 512
    iommu: bool = False            # -device intel-iommu,intremap=on
    hpet: bool = True
    hpet_msi: bool = False
    hpet_timers: int = 3
    watchdog_thresh: int = 2
    hardlockup_panic: bool = False
    nmi_watchdog: str | None = None     # e.g. "hpet", "0"; None = kernel default
    cmdline_extra: tuple[str, ...] = field(default_factory=tuple)
    # The fields below need QEMU >= 9 (x2APIC under TCG, eim) or QEMU with
    # qemu/patches (the rest); their defaults give the command line as before.
    x2apic: bool = False           # +x2apic on the CPU; with iommu, eim=on too
    iommu_hpet: bool = True        # False: hpet-scope=off, the DMAR leaves the HPET out
    hpet_strict_comparator: bool = False   # hpet.strict-comparator=on: a past comparator never fires
    # > 0: crashkernel=<n>M, and the initramfs carries this kernel and
    # initramfs in /boot for guest/tools/kdump-load (the kdump scenario).
    crash_kernel_mb: int = 0
    # Not QEMU's: the flavour of the detector's kernel the guest boots
    # (detectors.FLAVOURS, e.g. "debug"); None: the plain kernel.
    flavour: str | None = None

    def validate(self) -> "MachineSpec":
        if not 1 <= self.cpus <= MAX_TCG_CPUS:
            raise HarnessError(f"cpus={self.cpus}: must be 1..{MAX_TCG_CPUS}")
        if self.sockets < 1 or self.threads < 1 or \
                self.slots % (self.sockets * self.threads):
            raise HarnessError(f"cpus={self.slots} cannot be split into "
                               f"sockets={self.sockets} x threads={self.threads}")
        if self.maxcpus and not self.cpus <= self.maxcpus <= MAX_TCG_CPUS:
            raise HarnessError(f"maxcpus={self.maxcpus}: must be {self.cpus} (cpus).."
                               f"{MAX_TCG_CPUS}")
        if not 0 <= self.watchdog_thresh <= 60:
            raise HarnessError(f"watchdog_thresh={self.watchdog_thresh}: must be 0..60")
        if not 3 <= self.hpet_timers <= 32:
            raise HarnessError(f"hpet_timers={self.hpet_timers}: must be 3..32")
        if self.memory_mb < 128:
            raise HarnessError(f"memory={self.memory_mb} MiB is too small (>= 128)")
        if self.crash_kernel_mb and not 64 <= self.crash_kernel_mb <= self.memory_mb - 256:
            raise HarnessError(f"crash_kernel={self.crash_kernel_mb} MiB: must be 64.."
                               f"{self.memory_mb - 256} (memory minus 256) MiB")
        if not self.iommu_hpet and not self.iommu:
            raise HarnessError("iommu_hpet=off (the HPET left out of the DMAR table) "
                               "needs iommu=on")
        detectors.flavour(self.flavour)       # an unknown one: one error line
        return self

    def qemu_features(self) -> tuple[str, ...]:
        """The qemu/patches features (harness.qemu_build.FEATURES) this
        machine needs of its QEMU. The IOMMU cases need the HPET behind the
        IOMMU and GCMD.CFI honoured: without them (QEMU 7.2) the HPET's
        messages bypass remapping, which no hardware does."""
        need = []
        if self.iommu:
            need += ["hpet-remap", "cfi"]
        if not self.iommu_hpet:
            need.append("hpet-scope")
        if self.hpet_strict_comparator:
            need.append("strict-comparator")
        return tuple(need)

    @property
    def apic(self) -> str:
        return "x2apic" if self.x2apic else "xapic"

    @property
    def iommu_mode(self) -> str:
        return "off" if not self.iommu else "described" if self.iommu_hpet else "undescribed"

    @property
    def comparator(self) -> str:
        return "hardware" if self.hpet_strict_comparator else "qemu"

    @property
    def slots(self) -> int:
        """CPUs the machine has room for: the ones it boots with plus the
        ones that can be hot-added."""
        return max(self.cpus, self.maxcpus)

    @property
    def cores(self) -> int:
        return self.slots // (self.sockets * self.threads)

    def label(self) -> str:
        parts = [f"{self.cpus}cpu"]
        if self.slots > self.cpus:
            parts.append(f"max{self.slots}")
        if self.sockets > 1:
            parts.append(f"{self.sockets}s")
        parts.append("iommu" if self.iommu else "noiommu")
        if self.x2apic:
            parts.append("x2apic")
        if not self.iommu_hpet:
            parts.append("hpet-undescribed")
        if self.hpet_strict_comparator:
            parts.append("strict-cmp")
        if self.hardlockup_panic:
            parts.append("panic")
        if self.crash_kernel_mb:
            parts.append("kdump")
        if not self.hpet:
            parts.append("nohpet")
        elif not self.hpet_msi and self.hpet_timers > 3:
            parts.append("nomsi")        # the HPET detector's machine, minus FSB
        if self.hpet_msi and self.nmi_watchdog is None:
            parts.append("wd-default")   # an HPET detector machine not asked to use it
        parts.extend(self.cmdline_extra)
        if self.flavour:
            parts.append(self.flavour)
        return "-".join(parts)

    def with_(self, **kw) -> "MachineSpec":
        return replace(self, **kw).validate()

    def kernel_cmdline(self, accel: str = "kvm") -> str:
        """The guest's command line. Under TCG, tsc=reliable unless the
        machine says otherwise: the guest's TSC is the host's TSC and its
        HPET QEMU's virtual clock, and on a host whose cores' TSCs differ
        QEMU keeps the guest TSC monotonic by moving it forward, so the
        two drift apart by up to a thousand ppm at times, and the kernel's
        clocksource watchdog then marks the TSC unstable (seen in
        boundary-sweep cases: 1.03 ms over 875 ms). That is the emulator,
        not the guest; the HPET detector would disable itself.

        Under TCG also no_timer_check, which Linux sets itself on KVM,
        Hyper-V and VMware (arch/x86/kernel/kvm.c, mshyperv.c, vmware.c):
        at boot check_timer() wants 4 timer ticks within 4e10/HZ TSC
        cycles, 62 ms here, and TCG's TSC is host time while the ticks need
        the boot vCPU to run. On an overcommitted host it misses them and
        panics ("timer doesn't work through Interrupt-remapped IO-APIC":
        4 boots at host load 8-22, and every boot of 64 vCPUs)."""
        args = ["console=ttyS0,115200", "loglevel=7", "panic=-1",
                f"watchdog_thresh={self.watchdog_thresh}",
                f"sysctl.kernel.hardlockup_panic={int(self.hardlockup_panic)}"]
        if self.nmi_watchdog is not None:
            args.append(f"nmi_watchdog={self.nmi_watchdog}")
        if self.crash_kernel_mb:
            args.append(f"crashkernel={self.crash_kernel_mb}M")
        extra = list(self.cmdline_extra)
        if accel == "tcg" and not any(a.startswith("tsc=") for a in extra):
            extra.append("tsc=reliable")
        if accel == "tcg":
            extra.append("no_timer_check")
        return " ".join(args + extra)


def qemu_argv(spec: MachineSpec, accel: str, kernel: Path, initrd: Path,
              console_log: Path, agent_sock: str, qmp_sock: str,
              qemu: str = "qemu-system-x86_64", console_sock: str | None = None,
              user_qmp_sock: str | None = None, gdb_port: int | None = None,
              extra: tuple[str, ...] = ()) -> list[str]:
    """console_sock: the console on a socket for a person (still logged
    whole to console_log); user_qmp_sock: a second QMP monitor for them, as
    the harness holds the first; gdb_port: a gdb stub on 127.0.0.1; extra:
    more devices (the SSH network)."""
    machine = f"q35,hpet={'on' if spec.hpet else 'off'}"
    if spec.iommu and accel == "kvm":
        machine += ",kernel-irqchip=split"   # intremap needs a split irqchip on KVM
    argv = [qemu, "-machine", machine, "-accel", accel,
            "-cpu", cpu_model(accel) + (",+x2apic" if spec.x2apic else ""),
            "-smp", f"{spec.cpus},maxcpus={spec.slots},sockets={spec.sockets},"
                    f"cores={spec.cores},threads={spec.threads}",
            "-m", str(spec.memory_mb),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-global", f"hpet.msi={'on' if spec.hpet_msi else 'off'}",
            "-global", f"hpet.timers={spec.hpet_timers}",
            # S3 offered to the guest (suspend-resume); nothing else changes
            "-global", "ICH9-LPC.disable_s3=0",
            *(("-global", "hpet.strict-comparator=on") if spec.hpet_strict_comparator
              else ()),
            "-chardev", (f"socket,id=con0,path={console_sock},abstract=on,server=on,"
                         f"wait=off,logfile={console_log}") if console_sock
            else f"file,id=con0,path={console_log}",
            "-serial", "chardev:con0",
            "-chardev", f"socket,id=agent0,path={agent_sock},abstract=on,server=on,wait=off",
            "-serial", "chardev:agent0",
            "-chardev", f"socket,id=qmp0,path={qmp_sock},abstract=on,server=on,wait=off",
            "-mon", "chardev=qmp0,mode=control",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", spec.kernel_cmdline(accel)]
    if spec.iommu:
        argv += ["-device", "intel-iommu,intremap=on"
                 + (",eim=on" if spec.x2apic else "")
                 + ("" if spec.iommu_hpet else ",hpet-scope=off")]
    if user_qmp_sock:
        argv += ["-chardev", f"socket,id=qmp1,path={user_qmp_sock},abstract=on,"
                 f"server=on,wait=off", "-mon", "chardev=qmp1,mode=control"]
    if gdb_port:
        argv += ["-gdb", f"tcp:127.0.0.1:{gdb_port}"]
    return argv + list(extra)
