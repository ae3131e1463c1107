"""Config fragments are checked against the final .config.

The unit tests use a .config produced by this project's fragments on 6.12
(tests/data/buddy-6.12.config); the integration test runs the real kconfig
on an unsatisfiable fragment and expects the build to stop naming it.
"""
from pathlib import Path

import pytest

from harness import kbuild, kconfig
from harness.errors import HarnessError
from harness.paths import KERNEL_CONFIG_DIR

DATA = Path(__file__).parent / "data"
REAL_CONFIG = DATA / "buddy-6.12.config"


def test_project_fragments_are_satisfied_by_a_real_config():
    final = kconfig.parse_config(REAL_CONFIG.read_text())
    for frag in kbuild.fragments_for("buddy"):
        wanted = list(kconfig.parse_fragment(frag).values())
        assert wanted, frag
        assert kconfig.missing_options(wanted, final) == []


def test_dropped_option_is_named_with_its_fragment(tmp_path):
    frag = tmp_path / "extra.config"
    frag.write_text("CONFIG_HARDLOCKUP_DETECTOR_PERF=y\n# CONFIG_SMP is not set\n"
                    "CONFIG_NR_CPUS=64\n")
    final = kconfig.parse_config(REAL_CONFIG.read_text())
    problems = kconfig.missing_options(list(kconfig.parse_fragment(frag).values()), final)
    assert problems == [
        "CONFIG_HARDLOCKUP_DETECTOR_PERF=y (from extra.config) ended up not set",
        "CONFIG_SMP=n (from extra.config) ended up =y",
        "CONFIG_NR_CPUS=64 (from extra.config) ended up =256",
    ]


def test_malformed_fragment_is_rejected(tmp_path):
    frag = tmp_path / "bad.config"
    frag.write_text("CONFIG_SMP=y\nSMP=y\n")
    with pytest.raises(HarnessError, match=r"bad.config:2: not a Kconfig line"):
        kconfig.parse_fragment(frag)


def test_unsatisfiable_fragment_stops_the_real_configure(tmp_path, built):
    """LKDTM depends on RUNTIME_TESTING_MENU: asking for it alone must fail."""
    kernel, _ = built
    frag = tmp_path / "unsatisfiable.config"
    frag.write_text("# CONFIG_RUNTIME_TESTING_MENU is not set\nCONFIG_LKDTM=m\n")
    src = Path((kernel.build_dir / "source").resolve()) \
        if (kernel.build_dir / "source").exists() else None
    assert src is not None, "build dir has no source link"
    frags = [KERNEL_CONFIG_DIR / "base.config", frag]
    with pytest.raises(HarnessError) as err:
        kbuild.configure(src, tmp_path / "build", frags, tmp_path / "log")
    assert "CONFIG_LKDTM=m (from unsatisfiable.config) ended up not set" in str(err.value)
