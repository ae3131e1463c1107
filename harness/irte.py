"""The Intel IOMMU's interrupt remapping table as the guest's debugfs shows it
(iommu/intel/ir_translation_struct, CONFIG_INTEL_IOMMU_DEBUGFS): a pure
parse, and the fields of an IRTE the harness checks.

drivers/iommu/intel/debugfs.c prints each present, remapped entry as
" %-5d %02x:%02x.%01x %08x %02x  %016llx\\t%016llx" (index, source-id as
bus:dev.fn, destination id, vector, then the high and low quadwords).
The low quadword's layout is the VT-d specification's (section 9.10,
"Interrupt Remapping Table Entry for Remapped Interrupts"): bits 7:5 the
delivery mode, bit 2 the destination mode (1: logical), bits 63:32 the
destination id: all of it in x2APIC mode (EIM), bits 47:40 in xAPIC mode.
"""
import re
from dataclasses import dataclass

# The debugfs file; its posted-interrupt part follows the "****" line.
PATH = "/sys/kernel/debug/iommu/intel/ir_translation_struct"

# Delivery modes (the APIC's): what bits 7:5 of the low quadword hold.
DELIVERY_MODES = {0: "fixed", 1: "lowest", 2: "smi", 4: "nmi", 5: "init", 7: "extint"}

# QEMU's HPET, behind intel-iommu (qemu/patches 0002): bus 0xff, devfn 0x78.
HPET_SOURCE_ID = "ff:0f.0"

_ENTRY = re.compile(r"^\s*(\d+)\s+([0-9a-f]{2}:[0-9a-f]{2}\.[0-7])\s+([0-9a-f]{8})\s+"
                    r"([0-9a-f]{2})\s+([0-9a-f]{16})\s+([0-9a-f]{16})\s*$")


@dataclass(frozen=True)
class Irte:
    index: int
    source_id: str
    dest_id: int
    vector: int
    high: int
    low: int

    @property
    def delivery_mode(self) -> str:
        mode = (self.low >> 5) & 7
        return DELIVERY_MODES.get(mode, f"reserved {mode}")

    @property
    def logical(self) -> bool:
        return bool(self.low >> 2 & 1)

    def destination(self, x2apic: bool) -> int:
        """The destination (an APIC ID, or a logical one in logical mode),
        decoded for the remapping mode: all 32 bits with EIM, bits 15:8
        without."""
        return self.dest_id if x2apic else (self.dest_id >> 8) & 0xff


def parse(text: str) -> list[Irte]:
    """The remapped-interrupt entries of every IOMMU in `text`."""
    entries = []
    for line in text.split("****", 1)[0].splitlines():
        m = _ENTRY.match(line)
        if m:
            entries.append(Irte(int(m[1]), m[2], int(m[3], 16), int(m[4], 16),
                                int(m[5], 16), int(m[6], 16)))
    return entries


def nmi_entries(entries: list[Irte]) -> list[Irte]:
    return [e for e in entries if e.delivery_mode == "nmi"]
