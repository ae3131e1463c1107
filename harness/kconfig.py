"""Kconfig fragments: parse them and check that the final .config honours them.

olddefconfig silently drops an option whose dependencies are not met; a kernel
built that way would test something else than asked, so every option a
fragment sets must come out of the build with the value it asked for.
"""
import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


@dataclass(frozen=True)
class Option:
    name: str
    value: str          # "n" for "is not set"
    source: str         # fragment file name, for error messages


def parse_config(text: str, source: str = ".config") -> dict[str, Option]:
    options: dict[str, Option] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        m = _SET.match(line)
        if m:
            options[m.group(1)] = Option(m.group(1), m.group(2), source)
            continue
        m = _UNSET.match(line)
        if m:
            options[m.group(1)] = Option(m.group(1), "n", source)
            continue
        if not line.startswith("#"):
            raise HarnessError(f"{source}:{lineno}: not a Kconfig line: {raw!r}")
    return options


def parse_fragment(path: Path) -> dict[str, Option]:
    try:
        text = path.read_text()
    except OSError as e:
        raise HarnessError(f"cannot read config fragment {path}: {e.strerror}")
    return parse_config(text, path.name)


def missing_options(wanted: list[Option], final: dict[str, Option]) -> list[str]:
    """Describe each wanted option whose final value differs."""
    problems = []
    for opt in wanted:
        got = final.get(opt.name)
        got_value = got.value if got else "n"
        if got_value != opt.value:
            problems.append(
                f"{opt.name}={opt.value} (from {opt.source}) ended up "
                f"{'not set' if got_value == 'n' else '=' + got_value}")
    return problems


def fragment_problems(fragments: list[Path], final: dict[str, Option]) -> list[str]:
    """Each option of the fragments that a final config does not have."""
    wanted = [opt for frag in fragments for opt in parse_fragment(frag).values()]
    return missing_options(wanted, final)


def check_final_config(fragments: list[Path], dot_config: Path) -> None:
    problems = fragment_problems(fragments, parse_config(dot_config.read_text()))
    if problems:
        raise HarnessError("config fragment not satisfied by the final .config "
                           "(missing dependency?): " + "; ".join(problems))
