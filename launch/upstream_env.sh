#!/usr/bin/env bash
# Build upstream detectron2 main (with its C++ ops) from a source tarball into its own
# environment, through the same installer as everything else (`make install D2_SOURCE=...`).
#
#   VENV=.venv-upstream launch/upstream_env.sh ../shared/vendor/detectron2-02b5c4e.tar.gz
#
# The tarball (a `git archive` of detectron2, top-level folder detectron2/) is unpacked into a
# scratch directory that is removed afterwards; its git commit (kept in the archive's header)
# is recorded with the build. Skipped when VENV already holds a build of that commit.
# MAX_JOBS (default 2) compile jobs, with ninja.
set -euo pipefail
cd "$(dirname "$0")/.."
tarball=${1:-}
VENV=${VENV:-.venv-upstream}
if [ -z "$tarball" ] || [ ! -f "$tarball" ]; then
    echo "upstream_env: no detectron2 source tarball '${tarball}' (D2_TARBALL=path/to/detectron2-<commit>.tar.gz)" >&2
    exit 1
fi
tarball=$(cd "$(dirname "$tarball")" && pwd)/$(basename "$tarball")
commit=$(gzip -dc "$tarball" | git get-tar-commit-id 2>/dev/null || true)
# the same source: the same git commit (or, where the archive has none, the same tarball)
if [ -n "$commit" ]; then same="\"commit\": \"$commit\""; else same="\"origin\": \"$tarball\""; fi
if [ -f "$VENV/.installed" ] && grep -qF "$same" "$VENV/detectron2-source.json" 2>/dev/null; then
    echo "[upstream_env] $VENV already holds detectron2 ${commit:+$commit }built from $tarball"
    exit 0
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
tar -xzf "$tarball" -C "$scratch"
[ -f "$scratch/detectron2/setup.py" ] || { echo "upstream_env: $tarball has no detectron2/setup.py" >&2; exit 1; }
echo "[upstream_env] building $tarball (commit ${commit:-unknown}) into $VENV"
MAX_JOBS=${MAX_JOBS:-2} D2_COMMIT=$commit D2_ORIGIN=$tarball \
    make --no-print-directory install VENV="$VENV" D2_SOURCE="$scratch/detectron2"
