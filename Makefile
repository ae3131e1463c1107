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
SMOKE_MATRIX ?= matrix/smoke.toml
JOBS ?= 0
# QEMU=/path/to/qemu-system-x86_64: guests run on that binary (e.g. Debian's
# 7.2: the cases needing what it lacks are skipped by name). Unset: the
# patched QEMU (qemu/patches), built by `make qemu` and cached.
QEMU ?=
QEMU_DEP := $(if $(QEMU),,qemu)
# Extra `harness run` arguments. Passed as data (split on spaces, never
# evaluated by a shell): a workflow input can go in here safely.
RUN_ARGS ?=
export RUN_ARGS
# A previous run's results.json for the time estimate `nightly` prints first
# (default: $(OUT)/results.json if there is one, else a built-in table).
ESTIMATE_FROM ?=
APT_PACKAGES := qemu-system-x86 busybox-static linux-source-6.12 build-essential \
	flex bison bc libelf-dev libssl-dev cpio kmod python3-venv dropbear-bin \
	libglib2.0-dev libpixman-1-dev libfdt-dev libslirp-dev ninja-build pkg-config \
	seabios qemu-system-data ipxe-qemu git

.PHONY: qemu
.PHONY: help deps kernel initramfs test smoke nightly boot soak bench repeat unit clean-out \
	test-kernel

help:
	@echo "make deps       install Debian packages (as root) and the Python venv"
	@echo "make kernel     build (or reuse from cache) a guest kernel per detector [DETECTORS=$(DETECTORS)]"
	@echo "make initramfs  build the guest initramfs for that kernel"
	@echo "make qemu       build (or reuse from cache) QEMU 10.0.2 with qemu/patches, checked;"
	@echo "                the default QEMU of test, nightly, boot, soak (QEMU=path: another one)"
	@echo "make test       the fast tier: deps, kernel, unit and integration tests, then the"
	@echo "                smoke matrix [$(SMOKE_MATRIX)] (every axis value and scenario once)"
	@echo "make unit       only the tests that need no guest"
	@echo "make smoke      only the smoke matrix, reports in $(OUT)/"
	@echo "make nightly    the full matrix [MATRIX=$(MATRIX)] with reports in $(OUT)/, KTAP on"
	@echo "                stdout; prints the case count and a time estimate first [ESTIMATE_FROM=]"
	@echo "make boot       one guest, its console here (CPUS= SOCKETS= IOMMU=described APIC=x2apic"
	@echo "                COMPARATOR=hardware HPET_MSI= THRESH="
	@echo "                CMDLINE= KERNEL=bzImage GDB=port DETECTOR= SSH=1 MAXCPUS=); Ctrl-] quits"
	@echo "make soak       idle guests for DURATION=1800 s each: any report is a false positive"
	@echo "make bench      build times, boot time per vCPU count, cases per minute (bench matrix,"
	@echo "                smoke tier), latency per detector -> $(OUT)/bench/bench.json;"
	@echo "                PREVIOUS=bench.json prints both side by side with ratios"
	@echo "make test-kernel  KERNEL_SRC=tree: build it, run a few HPET hard lockup cases; for"
	@echo "                git bisect run use ./test-kernel (exit 125 = skip a tree that won't build)"
	@echo "make repeat     the matrix RUNS=5 times, then which verdicts differ between runs"
	@echo "Variables: KERNEL_SRC=/path/to/tree (your own kernel tree), QEMU=/path/to/qemu-system-x86_64"
	@echo "           (default: the patched build), DETECTORS, OUT, PYTEST_ARGS,"
	@echo "           MATRIX, JOBS (guests at once), RUN_ARGS (e.g. --cpus 1,2 --scenario hard-lockup)"

deps: $(PY)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "+ apt-get install $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
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

# The fast tier: the tests that are not matrix cases, then the smoke matrix
# (a sample of the nightly one: every axis value, every scenario family)
# through the same runner as `make nightly` (its reports in $(OUT)/).
test: kernel $(QEMU_DEP)
	$(PY) -m pytest -v tests --detectors $(DETECTORS) --harness-out $(OUT) \
		--junitxml=$(OUT)/junit-tests.xml $(PYTEST_ARGS)
	$(MAKE) --no-print-directory smoke

smoke: kernel $(QEMU_DEP)
	@set -f; set -x; $(PY) -m harness run --matrix $(SMOKE_MATRIX) --detector $(DETECTORS) \
		--out $(OUT) --jobs $(JOBS) $$RUN_ARGS

# The full matrix through the runner: KTAP on stdout, HTML/JUnit/JSON
# reports and every case's artifacts in $(OUT)/. JOBS=0: half the cores.
nightly: kernel $(QEMU_DEP)
	@set -f; set -x; $(PY) -m harness run --matrix $(MATRIX) --detector $(DETECTORS) \
		--out $(OUT) --jobs $(JOBS) $(if $(ESTIMATE_FROM),--estimate-from $(ESTIMATE_FROM)) \
		$$RUN_ARGS

# A guest for a person: its console on this terminal, Ctrl-] quits.
boot: kernel $(QEMU_DEP)
	$(PY) -m harness boot $(if $(DETECTOR),--detector $(DETECTOR)) \
		$(if $(CPUS),--cpus $(CPUS)) $(if $(SOCKETS),--sockets $(SOCKETS)) \
		$(if $(IOMMU),--iommu $(IOMMU)) $(if $(HPET_MSI),--hpet-msi $(HPET_MSI)) \
		$(if $(THRESH),--thresh $(THRESH)) $(if $(CMDLINE),--cmdline "$(CMDLINE)") \
		$(if $(KERNEL),--kernel $(KERNEL)) $(if $(GDB),--gdb $(GDB)) \
		$(if $(MAXCPUS),--maxcpus $(MAXCPUS)) $(if $(filter 1 yes on,$(SSH)),--ssh) \
		$(if $(APIC),--apic $(APIC)) $(if $(COMPARATOR),--comparator $(COMPARATOR))

# False positives: idle guests with a small watchdog_thresh for DURATION
# seconds each; any lockup report, unknown NMI or RCU stall fails its case.
# Never retried: a false positive is not a flake.
DURATION ?= 1800
SOAK_ARGS ?= --detector hpet,buddy --cpus 2,4,8 --iommu off,on --thresh 1
soak: kernel $(QEMU_DEP)
	$(PY) -m harness run --scenario soak --soak-seconds $(DURATION) $(SOAK_ARGS) \
		--retries 0 --out $(OUT)/soak --jobs $(JOBS)

# PREVIOUS=path/to/bench.json: side by side with ratios. SMOKE_RESULTS= takes
# the smoke tier's numbers from a finished run instead of running it;
# NIGHTLY_RESULTS= records a finished nightly run's.
PREVIOUS ?=
SMOKE_RESULTS ?=
NIGHTLY_RESULTS ?=
BENCH_ARGS ?=
bench: kernel qemu
	$(PY) -m harness bench --out $(OUT)/bench $(if $(PREVIOUS),--previous $(PREVIOUS)) \
		$(if $(SMOKE_RESULTS),--smoke-results $(SMOKE_RESULTS)) \
		$(if $(NIGHTLY_RESULTS),--nightly-results $(NIGHTLY_RESULTS)) $(BENCH_ARGS)

# A kernel tree of yours (KERNEL_SRC=): build it (no patches applied) and run
# the smoke tier's HPET boot and hard lockup cases. ./test-kernel does the
# work; its exit status is 0 pass, 1 fail, 125 the tree does not build,
# 2 bad input. make turns every failure into 2, so for
# `git bisect run` call the script itself (125 must reach git as "skip").
test-kernel: deps
	@./test-kernel || { rc=$$?; echo "make: ./test-kernel exited $$rc (make exits 2 for" \
		"any failure; git bisect run $(CURDIR)/test-kernel keeps 125 = skip)" >&2; exit $$rc; }

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
