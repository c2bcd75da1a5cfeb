#!/usr/bin/env bash
# The GPU check (benchmarks/gpu/README.md): on the GPU machine, installs the wheels carried in .whl
# (what its Python lacks; benchmarks/gpu/wheels.sh fetches them), then runs benchmarks/gpu/check.py with this checkout's src on the path.
#   bash benchmarks/gpu/check.sh --smoke --out /tmp/smoke    # the same steps tiny, on the CPU
#   bash benchmarks/gpu/check.sh --out "$OUT"                 # on the GPU machine
set -uo pipefail
cd "$(dirname "$0")/../.."
smoke=0
for arg in "$@"; do [ "$arg" = "--smoke" ] && smoke=1; done
if [ "$smoke" = 0 ] && compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "error: the carried wheels in .whl did not install" >&2; exit 2; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# PYTHON: the interpreter with torch (default python3, the GPU machine's own)
exec "${PYTHON:-python3}" benchmarks/gpu/check.py "$@"
