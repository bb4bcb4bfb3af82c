# ugs_d2: `make run` trains + evaluates the default detector, `make test` runs the tests.
# Both install everything into .venv on first use (see launch/install.sh).
#
#   make install D2_SOURCE=/path/to/detectron2   # use official detectron2 (full C++/CUDA ops)
#   make install D2_SOURCE=fallback              # back to the registry fallback (no C++ ops)
#   make run ARGS="ugs=full seed=1"              # any ugs-train overrides
#   make test PYTEST_ARGS="-k bins"
#   make lint            # ruff: pyflakes, pycodestyle, import order (pyproject.toml)
#   make test-upstream   # the tests on upstream main (../shared/vendor), in .venv-upstream
#   make install LOCK=   # without the lock launch/constraints.txt (e.g. a cluster's own torch)

VENV ?= .venv
PYTHON ?= python3
D2_SOURCE ?=
LOCK ?= launch/constraints.txt
ARGS ?=
PYTEST_ARGS ?= -q
export PYTHON VENV D2_SOURCE LOCK

.PHONY: install run test lint test-upstream bench-deps bench-deps-headless clean-outputs help FORCE

help:
	@sed -n '1,11p' Makefile

install: $(VENV)/.installed

# What the installer was last asked for beyond its files: the lock and a D2_SOURCE. Rewritten
# only when it changes, so that `make install D2_SOURCE=<other>` re-runs the installer (which
# then rebuilds detectron2) while a later `make run` without D2_SOURCE keeps that build.
$(VENV)/.install-request: FORCE
	@mkdir -p $(VENV); want="lock=$(LOCK)"; \
	if [ -n "$(D2_SOURCE)" ]; then want="$$want d2_source=$(D2_SOURCE)"; \
	else want="$$want $$(grep -o 'd2_source=.*' $@ 2>/dev/null)"; fi; \
	if [ "$$(cat $@ 2>/dev/null)" != "$$want" ]; then echo "$$want" > $@; fi
FORCE:

# Re-run the installer when what it installs changes; it skips what is already there.
$(VENV)/.installed: launch/install.sh launch/requirements.txt launch/constraints.txt launch/detectron2_fallback.py setup.cfg setup.py pyproject.toml $(VENV)/.install-request
	bash launch/install.sh
	touch $@

run: install
	$(VENV)/bin/ugs-train $(ARGS)

# pytest exits 5 when it collects no test (e.g. a -k that matches nothing): not a failure here.
test: install
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

# ruff, pinned, installed into the environment on first use; its settings are in pyproject.toml.
RUFF_VERSION ?= 0.17.6
lint: install
	@$(VENV)/bin/ruff --version 2>/dev/null | grep -qx "ruff $(RUFF_VERSION)" || \
		$(VENV)/bin/python -m pip install -q --disable-pip-version-check "ruff==$(RUFF_VERSION)"
	$(VENV)/bin/ruff check .

# The test suite on upstream detectron2 main with its C++ ops: the source tarball in
# ../shared/vendor/ (D2_TARBALL) built into its own environment by launch/upstream_env.sh
# (UPSTREAM_VENV; built once, 2-3 min on 2 idle cores, then reused). `.ci/run` does the same.
UPSTREAM_VENV ?= .venv-upstream
D2_TARBALL ?= $(firstword $(wildcard ../shared/vendor/detectron2-*.tar.gz))
test-upstream:
	VENV=$(UPSTREAM_VENV) bash launch/upstream_env.sh "$(D2_TARBALL)"
	$(MAKE) --no-print-directory test VENV=$(UPSTREAM_VENV) D2_SOURCE= PYTEST_ARGS="$(PYTEST_ARGS)"

# Bench-only dependencies (SAHI, for `ugs-bench sahi`); not needed to train, evaluate or test.
bench-deps: install
	$(VENV)/bin/python -m pip install --disable-pip-version-check -r launch/requirements-bench.txt

# SAHI for headless machines (CI installs it, so the SAHI-side tests run there): SAHI without
# its GUI OpenCV wheel (it needs libGL); cv2 comes from the stack's opencv-python-headless of the
# same version. Same SAHI pin as launch/requirements-bench.txt.
bench-deps-headless: install
	$(VENV)/bin/python -m pip install --disable-pip-version-check --no-deps \
		"$$(grep -E '^sahi==' launch/requirements-bench.txt)"
	$(VENV)/bin/python -m pip install --disable-pip-version-check "shapely>=2.0.0" fire click requests

clean-outputs:
	rm -rf outputs multirun
