# Entry points for people and CI. `make help` lists them.
SHELL := /bin/bash
comma := ,
VENV ?= .venv
PY := $(VENV)/bin/python
# Kernels to build and test; the first is the default kernel.
DETECTORS ?= hpet,buddy,perf
OUT ?= out
PYTEST_ARGS ?=
MATRIX ?= matrix/nightly.toml
JOBS ?= 0
RUN_ARGS ?=
APT_PACKAGES := qemu-system-x86 busybox-static linux-source-6.12 build-essential \
	flex bison bc libelf-dev libssl-dev cpio kmod python3-venv dropbear-bin \
	libglib2.0-dev libpixman-1-dev libfdt-dev libslirp-dev ninja-build pkg-config \
	seabios qemu-system-data ipxe-qemu git

.PHONY: qemu
.PHONY: help deps kernel initramfs test nightly boot soak bench repeat unit clean-out

help:
	@echo "make deps       install Debian packages (as root) and the Python venv"
	@echo "make kernel     build (or reuse from cache) a guest kernel per detector [DETECTORS=$(DETECTORS)]"
	@echo "make initramfs  build the guest initramfs for that kernel"
	@echo "make qemu       build (or reuse from cache) QEMU 10.0.2 with qemu/patches, checked"
	@echo "make test       everything: deps, kernel, unit tests and scenario tests on real guests"
	@echo "make unit       only the tests that need no guest"
	@echo "make nightly    the matrix [MATRIX=$(MATRIX)] with reports in $(OUT)/, KTAP on stdout"
	@echo "make boot       one guest, its console here (CPUS= SOCKETS= IOMMU=on HPET_MSI= THRESH="
	@echo "                CMDLINE= KERNEL=bzImage GDB=port DETECTOR= SSH=1 MAXCPUS=); Ctrl-] quits"
	@echo "make soak       idle guests for DURATION=1800 s each: any report is a false positive"
	@echo "make bench      boot time per vCPU count, matrix wall time, cases per minute"
	@echo "make repeat     the matrix RUNS=5 times, then which verdicts differ between runs"
	@echo "Variables: KERNEL_SRC=/path/to/tree (your own kernel tree), DETECTORS, OUT, PYTEST_ARGS,"
	@echo "           MATRIX, JOBS (guests at once), RUN_ARGS (e.g. --cpus 1,2 --scenario hard-lockup)"

deps: $(PY)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "+ apt-get install $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

$(PY): requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	@touch $(PY)

kernel: deps
	for d in $(subst $(comma), ,$(DETECTORS)); do $(PY) -m harness kernel --detector $$d || exit 1; done

# QEMU 10.0.2 with qemu/patches (the HPET behind intel-iommu, GCMD.CFI, ...):
# Debian's orig tarball, a TCG-only build (about 11 min on 2 cores), cached.
qemu: deps
	$(PY) -m harness qemu

initramfs: deps
	for d in $(subst $(comma), ,$(DETECTORS)); do $(PY) -m harness initramfs --detector $$d || exit 1; done

unit: deps
	$(PY) -m pytest -q tests -m "not kernel" $(PYTEST_ARGS)

# Everything: the tests that are not matrix cases, then the matrix itself
# through the same runner as `make nightly` (its reports in $(OUT)/).
test: kernel
	HARNESS_DETECTORS=$(DETECTORS) HARNESS_OUT=$(OUT) $(PY) -m pytest -v tests \
		--ignore=tests/test_scenarios.py --junitxml=$(OUT)/junit-tests.xml $(PYTEST_ARGS)
	$(MAKE) --no-print-directory nightly

# The default matrix through the runner: KTAP on stdout, HTML/JUnit/JSON
# reports and every case's artifacts in $(OUT)/. JOBS=0: half the cores.
nightly: kernel
	$(PY) -m harness run --matrix $(MATRIX) --detector $(DETECTORS) --out $(OUT) \
		--jobs $(JOBS) $(RUN_ARGS)

# A guest for a person: its console on this terminal, Ctrl-] quits.
boot: kernel
	$(PY) -m harness boot $(if $(DETECTOR),--detector $(DETECTOR)) \
		$(if $(CPUS),--cpus $(CPUS)) $(if $(SOCKETS),--sockets $(SOCKETS)) \
		$(if $(IOMMU),--iommu $(IOMMU)) $(if $(HPET_MSI),--hpet-msi $(HPET_MSI)) \
		$(if $(THRESH),--thresh $(THRESH)) $(if $(CMDLINE),--cmdline "$(CMDLINE)") \
		$(if $(KERNEL),--kernel $(KERNEL)) $(if $(GDB),--gdb $(GDB)) \
		$(if $(MAXCPUS),--maxcpus $(MAXCPUS)) $(if $(filter 1 yes on,$(SSH)),--ssh)

# False positives: idle guests with a small watchdog_thresh for DURATION
# seconds each; any lockup report, unknown NMI or RCU stall fails its case.
# Never retried: a false positive is not a flake.
DURATION ?= 1800
SOAK_ARGS ?= --detector hpet,buddy --cpus 2,4,8 --iommu off,on --thresh 1
soak: kernel
	HARNESS_SOAK_SECONDS=$(DURATION) $(PY) -m harness run --scenario soak $(SOAK_ARGS) \
		--retries 0 --out $(OUT)/soak --jobs $(JOBS)

bench: kernel
	$(PY) -m harness bench --out $(OUT)/bench

# Flake hunting: the matrix RUNS times back to back, then every case whose
# verdict differs between runs (or that needed a retry) is listed.
RUNS ?= 5
repeat: kernel
	mkdir -p $(OUT); for i in $$(seq 1 $(RUNS)); do \
		$(MAKE) --no-print-directory nightly OUT=$(OUT)/repeat/$$i > $(OUT)/repeat-$$i.ktap; \
	done; \
	$(PY) -m harness compare $$(for i in $$(seq 1 $(RUNS)); do echo $(OUT)/repeat/$$i/results.json; done)

clean-out:
	rm -rf $(OUT)
