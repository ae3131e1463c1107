"""Integration harness for the x86 HPET-based NMI hardlockup detector."""
