# Entry points for people and CI. `make help` lists them.
SHELL := /bin/bash
comma := ,
VENV ?= .venv
PY := $(VENV)/bin/python
# Kernels to build and test; the first is the default kernel.
DETECTORS ?= hpet,buddy
OUT ?= out
PYTEST_ARGS ?=
APT_PACKAGES := qemu-system-x86 busybox-static linux-source-6.12 build-essential \
	flex bison bc libelf-dev libssl-dev cpio kmod python3-venv

.PHONY: help deps kernel initramfs test nightly unit clean-out

help:
	@echo "make deps       install Debian packages (as root) and the Python venv"
	@echo "make kernel     build (or reuse from cache) a guest kernel per detector [DETECTORS=$(DETECTORS)]"
	@echo "make initramfs  build the guest initramfs for that kernel"
	@echo "make test       everything: deps, kernel, unit tests and scenario tests on real guests"
	@echo "make unit       only the tests that need no guest"
	@echo "make nightly    the default scenario matrix with a report in $(OUT)/"
	@echo "Variables: KERNEL_SRC=/path/to/tree (your own kernel tree), DETECTORS, OUT, PYTEST_ARGS"

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

initramfs: deps
	for d in $(subst $(comma), ,$(DETECTORS)); do $(PY) -m harness initramfs --detector $$d || exit 1; done

unit: deps
	$(PY) -m pytest -q tests --ignore=tests/test_scenarios.py $(PYTEST_ARGS)

test: kernel
	HARNESS_DETECTORS=$(DETECTORS) HARNESS_OUT=$(OUT) $(PY) -m pytest -v tests \
		--junitxml=$(OUT)/junit.xml $(PYTEST_ARGS)

nightly: kernel
	HARNESS_DETECTORS=$(DETECTORS) HARNESS_OUT=$(OUT) $(PY) -m pytest -v tests/test_scenarios.py \
		--junitxml=$(OUT)/junit.xml $(PYTEST_ARGS)
	@echo "report: $(OUT)/results.json $(OUT)/junit.xml, console logs in $(OUT)/guests/"

clean-out:
	rm -rf $(OUT)
