"""The accelerator probe boots the real kernel with a deadline."""
import time

from harness import accel


def test_tcg_probe_boots_the_kernel_to_init(built):
    kernel, initrd = built
    ok, why = accel.probe("tcg", kernel.bzimage, initrd)
    assert ok, why


def test_probe_answers_within_its_deadline_whatever_kvm_does(built):
    # On hosts where /dev/kvm opens but guests hang, this is the hang case.
    kernel, initrd = built
    start = time.monotonic()
    ok, why = accel.probe("kvm", kernel.bzimage, initrd, deadline_s=5)
    assert time.monotonic() - start < 5 + 5
    assert ok or why


def test_unknown_accelerator_fails_fast_with_qemu_reason(built):
    kernel, initrd = built
    start = time.monotonic()
    ok, why = accel.probe("no-such-accel", kernel.bzimage, initrd)
    assert not ok and "no-such-accel" in why
    assert time.monotonic() - start < accel.PROBE_DEADLINE_S


def test_choice_follows_the_probe(built, monkeypatch):
    kernel, initrd = built
    monkeypatch.delenv("HARNESS_ACCEL", raising=False)
    accel.choose_accel.cache_clear()
    kvm_ok, _ = accel.probe("kvm", kernel.bzimage, initrd)
    assert accel.choose_accel(kernel.bzimage, initrd) == ("kvm" if kvm_ok else "tcg")
    accel.choose_accel.cache_clear()
