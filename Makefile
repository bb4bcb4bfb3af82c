# ugs_d2: `make run` trains + evaluates the default detector, `make test` runs the tests.
# Both install everything into .venv on first use (see launch/install.sh).
#
#   make install D2_SOURCE=/path/to/detectron2   # use official detectron2 (full C++/CUDA ops)
#   make run ARGS="ugs=full seed=1"              # any ugs-train overrides
#   make test PYTEST_ARGS="-k bins"

VENV ?= .venv
PYTHON ?= python3
D2_SOURCE ?=
ARGS ?=
PYTEST_ARGS ?= -q
export PYTHON VENV D2_SOURCE

.PHONY: install run test bench-deps bench-deps-headless clean-outputs help

help:
	@sed -n '1,8p' Makefile

install: $(VENV)/.installed

# Re-run the installer when what it installs changes; it skips what is already there.
$(VENV)/.installed: launch/install.sh launch/requirements.txt launch/detectron2_fallback.py setup.cfg pyproject.toml
	bash launch/install.sh
	touch $@

run: install
	$(VENV)/bin/ugs-train $(ARGS)

# pytest exits 5 when it collects no test (e.g. a -k that matches nothing): not a failure here.
test: install
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

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
