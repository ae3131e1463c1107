"""ELF checks before a boot, on the real kernel and modules (and copies of
them altered the way a stale build would differ)."""
import gzip
import shutil

import pytest

from harness import elfcheck, kbuild, kconfig
from harness.errors import HarnessError


def test_the_built_kernel_and_its_modules_pass(built):
    kernel, _ = built
    elfcheck.check(kernel.bzimage, kernel.vmlinux, kernel.release, kernel.detector,
                   kernel.modules)
    facts = elfcheck.vmlinux_facts(kernel.vmlinux)
    assert facts["vermagic"].startswith(kernel.release + " ")
    assert elfcheck.bzimage_version(kernel.bzimage).startswith(kernel.release + " ")
    assert "lockup_inject" in kernel.modules


def test_module_with_other_vermagic_is_refused(built, tmp_path):
    kernel, _ = built
    ko = tmp_path / "lockup_inject.ko"
    data = kernel.modules["lockup_inject"].read_bytes()
    old = f"vermagic={kernel.release} ".encode()
    assert old in data
    # Same length, so the ELF layout stays valid: only the release differs.
    new = f"vermagic={kernel.release[:-1]}9 ".encode()
    ko.write_bytes(data.replace(old, new))
    with pytest.raises(HarnessError) as e:
        elfcheck.check(kernel.bzimage, kernel.vmlinux, kernel.release, kernel.detector,
                       {"lockup_inject": ko})
    msg = str(e.value)
    assert "module lockup_inject" in msg and f"{kernel.release[:-1]}9" in msg \
        and f"kernel {kernel.release} wants" in msg


def test_missing_detector_is_refused(built):
    kernel, _ = built
    other = next(d for d in elfcheck.DETECTOR_SYMBOLS if d != kernel.detector)
    with pytest.raises(HarnessError, match=f"the {other} detector is not built in"):
        elfcheck.check(kernel.bzimage, kernel.vmlinux, kernel.release, other, {})


def test_bzimage_of_another_build_is_refused(built, tmp_path):
    kernel, _ = built
    img = tmp_path / "bzImage"
    data = bytearray(kernel.bzimage.read_bytes())
    version = elfcheck.bzimage_version(kernel.bzimage).encode()
    at = data.index(version)
    stamp = version.index(b"#") + 1           # "#1 SMP" -> "#7 SMP": a rebuild
    data[at + stamp] = ord("7") if data[at + stamp] != ord("7") else ord("8")
    img.write_bytes(bytes(data))
    with pytest.raises(HarnessError, match="is not the kernel of"):
        elfcheck.check(img, kernel.vmlinux, kernel.release, kernel.detector, {})


def test_junk_is_refused(built, tmp_path):
    kernel, _ = built
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x7fELF not really" + bytes(600))
    with pytest.raises(HarnessError, match="not an x86 bzImage"):
        elfcheck.bzimage_version(junk)
    with pytest.raises(HarnessError):
        elfcheck.module_vermagic(junk)
    shutil.copy(kernel.bzimage, tmp_path / "x")
    with pytest.raises(HarnessError, match="vmlinux .* does not exist"):
        elfcheck.vmlinux_facts(tmp_path / "vmlinux")


def test_embedded_config_has_every_fragment_option(built):
    kernel, _ = built
    frags = kbuild.fragments_for(kernel.detector)
    assert elfcheck.check_config(kernel.vmlinux, frags) is True
    text = elfcheck.vmlinux_facts(kernel.vmlinux)["ikconfig"]
    # It is this build's config, not just any that passes.
    assert kconfig.parse_config(text) == kconfig.parse_config(kernel.config.read_text())


def test_vmlinux_built_from_other_fragments_is_refused(built, tmp_path):
    """A vmlinux whose embedded config lacks an option a fragment asks for
    (as a tree configured by hand would), here CONFIG_DETECT_HUNG_TASK."""
    kernel, _ = built
    data = bytearray(kernel.vmlinux.read_bytes())
    text = elfcheck.vmlinux_facts(kernel.vmlinux)["ikconfig"]
    start = data.index(b"IKCFG_ST") + len(b"IKCFG_ST")
    end = data.index(b"IKCFG_ED", start)
    assert "CONFIG_DETECT_HUNG_TASK=y\n" in text
    blob = gzip.compress(text.replace("CONFIG_DETECT_HUNG_TASK=y\n", "").encode(), 9)
    assert len(blob) <= end - start, "the edited config must fit where the old one was"
    data[start:end] = blob + bytes(end - start - len(blob))
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(bytes(data))
    with pytest.raises(HarnessError) as e:
        elfcheck.check_config(vmlinux, kbuild.fragments_for(kernel.detector))
    assert "was not built from our config fragments" in str(e.value) and \
        "CONFIG_DETECT_HUNG_TASK=y (from lockup.config) ended up not set" in str(e.value)
