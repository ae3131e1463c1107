"""The accelerator probe boots the real kernel with a deadline."""
import re
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
    elapsed = time.monotonic() - start
    assert elapsed < 5 + 5
    # Whatever KVM does, the reason says which of the three things happened,
    # and it agrees with ok and with the time taken.
    if ok:                                  # booted: in how long
        took = re.fullmatch(r"kernel reached /init in (\d+\.\d) s", why)
        assert took and float(took[1]) <= elapsed + 0.05, why
    elif why.startswith("guest hung"):      # /dev/kvm opens but the guest hangs
        assert why == "guest hung: kernel did not reach /init within 5 s"
        assert elapsed >= 5
    else:                                   # QEMU gave up: its last error line
        assert re.match(r"(?:\S*/)?qemu-system-x86_64: |qemu exited with -?\d+$", why), why


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
