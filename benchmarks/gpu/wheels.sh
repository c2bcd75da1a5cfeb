#!/usr/bin/env bash
# Here, before a GPU run: download into .whl (ignored by git) the wheels dlscale needs that the
# GPU machine's Python 3.12 lacks (see /work/.library/device/KINDS.md for what it has), for
# the device tool's `carry`. The machine has no network.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d .whl \
    tomli-w simplejpeg uvicorn starlette python-multipart httptools
ls -la .whl
