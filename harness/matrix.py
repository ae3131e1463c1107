"""The test matrix: machine specs crossed with scenarios, from a TOML file or
from command line axes, expanded into a flat list of cases.

A matrix file is a list of [[group]] tables. Each key of a group other than
`name` and `scenarios` is a machine axis; a list is crossed with the other
axes, a single value applies to every machine. Scenarios are "name" or
"name@cpus", where cpus is all, first, middle, last, spread (first, middle
and last) or a CPU number. Scenarios that need two CPUs are left out on
one-CPU machines. A [scenario_args.NAME] table gives keywords to a
scenario that takes parameters (harness.catalog), for all its cases in the
file (matrix/smoke.toml: a shorter boundary sweep). See matrix/nightly.toml.
"""
import hashlib
import itertools
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import catalog, expectations, kbuild
from harness.errors import HarnessError
from harness.machine import (APIC_MODES, COMPARATOR_RULES, IOMMU_MODES,
                             KERNEL_FLAVOURS, MachineSpec)

# Matrix key -> MachineSpec field, and the type its values must have.
AXES = {
    "cpus": ("cpus", int), "sockets": ("sockets", int), "threads": ("threads", int),
    "maxcpus": ("maxcpus", int),
    "memory": ("memory_mb", int), "hpet": ("hpet", bool),
    "hpet_msi": ("hpet_msi", bool), "hpet_timers": ("hpet_timers", int),
    "thresh": ("watchdog_thresh", int), "panic": ("hardlockup_panic", bool),
    "nmi_watchdog": ("nmi_watchdog", str), "cmdline": ("cmdline_extra", str),
    "crash_kernel": ("crash_kernel_mb", int),
}
# Axes whose values are names, each a setting of one or more MachineSpec
# fields (the machine.APIC_MODES, IOMMU_MODES and COMPARATOR_RULES tables;
# harness/expectations.py PATHS says what each combination must do), and
# the flavour of the detector's kernel (machine.KERNEL_FLAVOURS).
NAMED_AXES = {"apic": APIC_MODES, "iommu": IOMMU_MODES, "comparator": COMPARATOR_RULES,
              "flavour": KERNEL_FLAVOURS}
# Older spellings kept working: iommu = true / false, --iommu on.
ALIASES = {"iommu": {True: "described", False: "off", "on": "described"}}
ALL_AXES = (*AXES, *NAMED_AXES)


def named_value(key: str, value) -> str:
    """The canonical name of a value of a named axis, or one error line."""
    if isinstance(value, (bool, str)):
        value = ALIASES.get(key, {}).get(value, value)
    if not isinstance(value, str) or value not in NAMED_AXES[key]:
        known = ", ".join(NAMED_AXES[key])
        raise HarnessError(f"unknown {key} value {value!r}; known: {known}")
    return value


SELECTORS = ("all", "first", "middle", "last", "spread")


@dataclass(frozen=True)
class Case:
    detector: str
    spec: MachineSpec
    scenario: str
    cpu: int | None
    id: str = ""

    @property
    def guest_key(self) -> str:
        """Cases with the same key may share one booted guest."""
        return guest_key(self.detector, self.spec)

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in self.id)

    def to_dict(self) -> dict:
        spec = asdict(self.spec)
        spec["cmdline_extra"] = list(spec["cmdline_extra"])
        return {"id": self.id, "detector": self.detector, "spec": spec,
                "scenario": self.scenario, "cpu": self.cpu}

    @classmethod
    def from_dict(cls, d: dict) -> "Case":
        spec = dict(d["spec"], cmdline_extra=tuple(d["spec"]["cmdline_extra"]))
        return cls(d["detector"], MachineSpec(**spec), d["scenario"], d["cpu"], d["id"])

    def reproduce(self, params: dict | None = None) -> str:
        """A command line that runs this one case on a fresh guest, with the
        scenario's keywords `params` if the run had any."""
        s, default = self.spec, MachineSpec(**expectations.machine_defaults(self.detector))
        args = ["python -m harness run", f"--detector {self.detector}",
                f"--cpus {s.cpus}", f"--iommu {s.iommu_mode}"]
        for key in ("apic", "comparator", "flavour"):
            if getattr(s, key) != getattr(default, key):
                args.append(f"--{key} {getattr(s, key)}")
        for key, (field, kind) in AXES.items():
            value, base = getattr(s, field), getattr(default, field)
            if key == "cpus" or value == base:
                continue
            if kind is bool:
                value = "on" if value else "off"
            elif value is None:
                value = "default"
            elif field == "cmdline_extra":
                value = "'" + " ".join(value) + "'"
            args.append(f"--{key.replace('_', '-')} {value}")
        where = "" if self.cpu is None else f"@{self.cpu}"
        args.append(f"--scenario {self.scenario}{where}")
        args.extend(f"--scenario-arg {self.scenario}.{k}={v}"
                    for k, v in sorted((params or {}).items()))
        return " ".join(args)


def guest_key(detector: str, spec: MachineSpec) -> str:
    """One booted guest serves every case with this key (the runner's
    grouping, the guest pool's reuse, the time estimate)."""
    digest = hashlib.sha1(repr(asdict(spec)).encode()).hexdigest()[:8]
    return f"{detector}/{spec.label()}/{digest}"


def _values(where: str, key: str, raw) -> list[dict]:
    """An axis value or list of values, checked: each as the MachineSpec
    fields it sets."""
    values = raw if isinstance(raw, list) else [raw]
    if not values:
        raise HarnessError(f"{where}: {key} is an empty list")
    if key in NAMED_AXES:
        try:
            return [dict(NAMED_AXES[key][named_value(key, v)]) for v in values]
        except HarnessError as e:
            raise HarnessError(f"{where}: {e}") from None
    field, kind = AXES[key]
    for v in values:
        # bool is an int in Python: do not let `cpus = true` through.
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            raise HarnessError(f"{where}: {key} = {v!r}: expected {kind.__name__}")
    if field == "cmdline_extra":
        return [{field: tuple(v.split())} for v in values]
    if field == "nmi_watchdog":   # "default": leave it to the kernel
        return [{field: None if v == "default" else v} for v in values]
    return [{field: v} for v in values]


def _cpus_for(where: str, selector: str, spec: MachineSpec) -> list[int]:
    n = spec.cpus
    picks = {"all": list(range(n)), "first": [0], "middle": [n // 2], "last": [n - 1],
             "spread": sorted({0, n // 2, n - 1})}
    if selector in picks:
        return picks[selector]
    if not selector.isdigit():
        raise HarnessError(f"{where}: cpu selector {selector!r}: expected a CPU "
                           f"number or one of {', '.join(SELECTORS)}")
    if int(selector) >= n:
        raise HarnessError(f"{where}: cpu {selector} is outside the {n}-cpu machine")
    return [int(selector)]


def _scenario_cases(where: str, detector: str, spec: MachineSpec, item) -> list[Case]:
    if not isinstance(item, str):
        raise HarnessError(f"{where}: scenario {item!r}: expected a string")
    name, _, selector = item.partition("@")
    if name not in catalog.SCENARIOS:
        raise HarnessError(f"{where}: unknown scenario {name!r}; known: "
                           f"{', '.join(catalog.SCENARIOS)}")
    if name in catalog.NEEDS_TWO_CPUS and spec.cpus < 2:
        return []
    if name not in catalog.TAKES_CPU:
        if selector:
            raise HarnessError(f"{where}: scenario {name!r} takes no cpu ({item!r})")
        return [Case(detector, spec, name, None)]
    return [Case(detector, spec, name, cpu)
            for cpu in _cpus_for(where, selector or "last", spec)]


def expand_group(where: str, group: dict) -> list[Case]:
    """Every case of one group, machines in axis order."""
    group = dict(group)
    group.pop("name", None)
    scenarios = group.pop("scenarios", None)
    if not isinstance(scenarios, list) or not scenarios:
        raise HarnessError(f"{where}: needs a non-empty list 'scenarios'")
    detectors = group.pop("detector", None)
    detectors = detectors if isinstance(detectors, list) else [detectors]
    for d in detectors:
        if d not in kbuild.DETECTORS:
            raise HarnessError(f"{where}: unknown detector {d!r}; known: "
                               f"{', '.join(kbuild.DETECTORS)}")
    for key in group:
        if key not in ALL_AXES:
            raise HarnessError(f"{where}: unknown key {key!r}; known: detector, "
                               f"scenarios, {', '.join(ALL_AXES)}")
    axes = [_values(where, k, v) for k, v in group.items()]
    cases = []
    for d in detectors:
        for combo in itertools.product(*axes):
            fields = expectations.machine_defaults(d)
            for setting in combo:
                fields.update(setting)
            try:
                spec = MachineSpec(**fields).validate()
            except HarnessError as e:
                raise HarnessError(f"{where}: {e}") from None
            for item in scenarios:
                cases.extend(_scenario_cases(where, d, spec, item))
    return cases


def name_cases(cases: list[Case]) -> list[Case]:
    """Give each case its id; a repeat of the same case gets '#2', '#3'..."""
    seen: dict[str, int] = {}
    named = []
    for c in cases:
        base = f"{c.detector}/{c.spec.label()}/{c.scenario}" + \
            (f"@cpu{c.cpu}" if c.cpu is not None else "")
        seen[base] = seen.get(base, 0) + 1
        cid = base if seen[base] == 1 else f"{base}#{seen[base]}"
        named.append(Case(c.detector, c.spec, c.scenario, c.cpu, cid))
    return named


def _read(path: Path) -> dict:
    if not path.is_file():
        raise HarnessError(f"matrix file {path} does not exist")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise HarnessError(f"{path}: not valid TOML: {e}") from None
    unknown = set(doc) - {"group", "scenario_args"}
    if unknown:
        raise HarnessError(f"{path}: unknown top-level key(s) {sorted(unknown)}; "
                           f"only [[group]] and [scenario_args] tables")
    return doc


def scenario_args(path: Path) -> dict[str, dict]:
    """The file's [scenario_args.NAME] tables: keywords for the scenarios
    that take parameters, for every case of that scenario in the file."""
    path = Path(path)
    raw = _read(path).get("scenario_args", {})
    if not isinstance(raw, dict):
        raise HarnessError(f"{path}: scenario_args must be a table of [scenario_args.NAME]")
    for name, args in raw.items():
        try:
            catalog.check_args(name, args)
        except HarnessError as e:
            raise HarnessError(f"{path}: {e}") from None
    return raw


def load(path: Path) -> list[Case]:
    path = Path(path)
    doc = _read(path)
    groups = doc.get("group")
    if not isinstance(groups, list) or not groups:
        raise HarnessError(f"{path}: no [[group]] tables")
    cases = []
    for i, g in enumerate(groups, 1):
        cases.extend(expand_group(f"{path}: group {g.get('name', i)!r}", g))
    return name_cases(cases)


def select(cases: list[Case], detectors=None, cpus=None, iommu=None,
           scenarios=None, ids=None, apic=None, comparator=None,
           flavours=None) -> list[Case]:
    """The cases matching every filter given (None = no filter); iommu,
    apic, comparator and flavour by their value names (or aliases: iommu
    True; flavour "default" is the plain kernel)."""
    iommu = None if iommu is None else [named_value("iommu", v) for v in iommu]
    flavours = None if flavours is None else \
        [KERNEL_FLAVOURS[named_value("flavour", v)]["flavour"] for v in flavours]

    def keep(c: Case) -> bool:
        return ((detectors is None or c.detector in detectors)
                and (cpus is None or c.spec.cpus in cpus)
                and (iommu is None or c.spec.iommu_mode in iommu)
                and (apic is None or c.spec.apic in apic)
                and (comparator is None or c.spec.comparator in comparator)
                and (flavours is None or c.spec.flavour in flavours)
                and (scenarios is None or c.scenario in scenarios)
                and (ids is None or c.id in ids))
    return [c for c in cases if keep(c)]
