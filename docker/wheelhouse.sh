#!/usr/bin/env bash
# Every wheel the image installs, downloaded on this machine into docker/wheels, for a build whose
# containers reach no package index (PIP_ARGS="--no-index --find-links /wheels"). PyTorch is its CPU
# build: torch==2.13.0 resolves to the 2.13.0+cpu wheel where this machine's pip finds one (find-links).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
deps=$("$PY" docker/requirements.py "${AEKNN_EXTRAS-maps}")  # what compose builds with (the Dockerfile's EXTRAS)
t0=$SECONDS
# shellcheck disable=SC2086
# async-timeout: redis needs it below Python 3.11.3, which this machine's pip (a later 3.11) would skip
"$PY" -m pip download --quiet --only-binary=:all: -d docker/wheels ${TORCH_PIN:-torch==2.13.0} "setuptools>=68" wheel \
    "async-timeout>=4.0.3" $deps
echo "wheelhouse: $(ls docker/wheels/*.whl | wc -l) wheels, $(du -sh docker/wheels | cut -f1), in $((SECONDS - t0)) s" >&2
