#!/usr/bin/env bash
# Create (or update) .venv with the pinned stack, detectron2 and ugs_d2 itself.
#
#   launch/install.sh                      # fallback detectron2 (registry sdist, no C++ ops)
#   D2_SOURCE=/path/to/detectron2 launch/install.sh   # official source: full build
#   D2_SOURCE='git+https://github.com/facebookresearch/detectron2.git' launch/install.sh
#
# Idempotent: every step is skipped when what it installs is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
D2_SOURCE=${D2_SOURCE:-}

if [ ! -x "$VENV/bin/python" ]; then
    echo "[install] creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
pip_quiet() {  # pip, minus warnings about local find-links/index folders that do not exist
    "${PIP[@]}" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

# A recent pip builds the editable install from pyproject.toml; quick when already satisfied.
pip_quiet install -q --upgrade "pip>=24"
echo "[install] pinned stack (launch/requirements.txt)"
pip_quiet install -q -r launch/requirements.txt

d2_installed_from() {
    "$PY" - <<'PY' 2>/dev/null || true
import importlib.metadata as md
for name in ("detectron2", "pb1-detectron2"):
    try:
        print(name, md.version(name))
        break
    except md.PackageNotFoundError:
        pass
PY
}

current=$(d2_installed_from)
if [ -n "$D2_SOURCE" ]; then
    if [[ "$current" == detectron2* ]] && [ "${D2_REINSTALL:-0}" != 1 ]; then
        echo "[install] $current already installed (D2_REINSTALL=1 to rebuild from $D2_SOURCE)"
    else
        echo "[install] building detectron2 from $D2_SOURCE (with its C++/CUDA ops)"
        "${PIP[@]}" uninstall -q -y pb1-detectron2 2>/dev/null || true
        pip_quiet install --no-build-isolation --no-deps "$D2_SOURCE"
    fi
elif [ -z "$current" ]; then
    echo "[install] no D2_SOURCE given: building the registry fallback pb1-detectron2==0.6 (no C++ ops)"
    "$PY" launch/detectron2_fallback.py
else
    echo "[install] $current already installed"
fi

echo "[install] ugs_d2 (editable)"
pip_quiet install -q --no-build-isolation --no-deps -e .
"$PY" -c "import ugs_d2.compat as c; print('[install] ok:', c.describe_detectron2())"
