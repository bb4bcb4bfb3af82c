#!/usr/bin/env bash
# Create (or update) .venv with the pinned stack, detectron2 and ugs_d2 itself.
#
#   launch/install.sh                      # fallback detectron2 (registry sdist, no C++ ops)
#   D2_SOURCE=/path/to/detectron2 launch/install.sh   # official source: full build
#   D2_SOURCE='git+https://github.com/facebookresearch/detectron2.git' launch/install.sh
#   D2_SOURCE=fallback launch/install.sh   # back to the registry fallback from a source build
#   LOCK= launch/install.sh                # without the lock (launch/constraints.txt)
#
# Idempotent: every step is skipped when what it installs is already there. A D2_SOURCE other
# than the one the installed detectron2 was built from (recorded in $VENV/detectron2-source.json)
# rebuilds detectron2; D2_COMMIT names the source's git commit when it is not a git checkout
# (e.g. an unpacked `git archive`), D2_ORIGIN where it came from (e.g. that archive).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
D2_SOURCE=${D2_SOURCE:-}
LOCK=${LOCK-launch/constraints.txt}  # set but empty: no lock

if [ ! -x "$VENV/bin/python" ]; then
    echo "[install] creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
pip_quiet() {  # pip, minus warnings about local find-links/index folders that do not exist
    "${PIP[@]}" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

CONSTRAINTS=()
if [ -n "$LOCK" ]; then
    [ -f "$LOCK" ] || { echo "[install] LOCK=$LOCK: no such file (LOCK= installs without a lock)" >&2; exit 1; }
    CONSTRAINTS=(-c "$LOCK")
fi
# A recent pip builds the editable install from pyproject.toml; quick when already satisfied.
pip_quiet install -q --upgrade "pip>=24" "${CONSTRAINTS[@]}"
echo "[install] pinned stack (launch/requirements.txt${LOCK:+, locked by $LOCK})"
pip_quiet install -q -r launch/requirements.txt "${CONSTRAINTS[@]}"

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

SOURCE_RECORD="$VENV/detectron2-source.json"  # read by ugs_d2.compat.detectron2_build()
built_from() {
    "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["source"])' "$SOURCE_RECORD" 2>/dev/null || true
}

install_fallback() {
    echo "[install] building the registry fallback pb1-detectron2==0.6 (no C++ ops)"
    "$PY" launch/detectron2_fallback.py
}

current=$(d2_installed_from)
if [ "$D2_SOURCE" == fallback ]; then
    if [[ "$current" == pb1-detectron2* ]] && [ "${D2_REINSTALL:-0}" != 1 ]; then
        echo "[install] $current (the registry fallback) already installed"
    else
        from=$(built_from)
        [ -z "$current" ] || echo "[install] replacing $current${from:+ (built from $from)} by the registry fallback"
        "${PIP[@]}" uninstall -q -y pb1-detectron2 detectron2 2>/dev/null || true
        rm -f "$SOURCE_RECORD"
        install_fallback
    fi
elif [ -n "$D2_SOURCE" ]; then
    if [[ "$current" == detectron2* ]] && [ "$(built_from)" == "$D2_SOURCE" ] && [ "${D2_REINSTALL:-0}" != 1 ]; then
        echo "[install] $current already built from $D2_SOURCE (D2_REINSTALL=1 to rebuild)"
    else
        echo "[install] building detectron2 from $D2_SOURCE (with its C++/CUDA ops; MAX_JOBS=${MAX_JOBS:-unset})"
        pip_quiet install -q ninja "${CONSTRAINTS[@]}"  # parallel C++ build (torch uses it when present)
        "${PIP[@]}" uninstall -q -y pb1-detectron2 detectron2 2>/dev/null || true
        rm -f "$SOURCE_RECORD"
        pip_quiet install --no-build-isolation --no-deps "$D2_SOURCE"
        commit=${D2_COMMIT:-}
        if [ -z "$commit" ] && [ -e "$D2_SOURCE/.git" ]; then  # a checkout (not a folder inside one)
            commit=$(git -C "$D2_SOURCE" rev-parse HEAD 2>/dev/null || true)
        fi
        "$PY" - "$SOURCE_RECORD" "$D2_SOURCE" "$commit" "${D2_ORIGIN:-}" <<'PY'
import json, os, sys
path, source, commit, origin = sys.argv[1:]
with open(path + ".tmp", "w") as f:
    json.dump({"source": source, "commit": commit or None, "origin": origin or None}, f)
os.replace(path + ".tmp", path)
PY
    fi
elif [ -z "$current" ]; then
    echo "[install] no D2_SOURCE given"
    install_fallback
else
    echo "[install] $current already installed"
fi

echo "[install] ugs_d2 (editable)"
pip_quiet install -q --no-build-isolation --no-deps -e .
"$PY" -c "import ugs_d2.compat as c; print('[install] ok:', c.describe_detectron2())"
