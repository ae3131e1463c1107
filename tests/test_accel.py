"""The accelerator probe boots a real one-sector guest with a deadline."""
import time

from harness import accel


def test_tcg_probe_runs_the_guest():
    ok, why = accel.probe("tcg")
    assert ok, why


def test_probe_answers_within_its_deadline_whatever_kvm_does():
    # On hosts where /dev/kvm opens but guests hang, this is the hang case.
    start = time.monotonic()
    ok, why = accel.probe("kvm", deadline_s=5)
    assert time.monotonic() - start < 5 + 5
    assert ok or why


def test_unknown_accelerator_fails_fast_with_qemu_reason():
    start = time.monotonic()
    ok, why = accel.probe("no-such-accel")
    assert not ok and "no-such-accel" in why
    assert time.monotonic() - start < accel.PROBE_DEADLINE_S


def test_choice_follows_the_probe(monkeypatch):
    monkeypatch.delenv("HARNESS_ACCEL", raising=False)
    accel.choose_accel.cache_clear()
    kvm_ok, _ = accel.probe("kvm")
    assert accel.choose_accel() == ("kvm" if kvm_ok else "tcg")
    accel.choose_accel.cache_clear()
