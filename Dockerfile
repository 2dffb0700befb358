# One image for the API, the workers and the init step; docker-compose.yml gives each its command.
# PyTorch's CPU wheels by default (a small image); the GPU override builds with a CUDA wheel index:
#   docker compose -f docker-compose.yml -f docker-compose.gpu.yml up
# Without an image registry or an index (an air-gapped machine): base images from Debian's packages
# (docker/local-images.sh) and the wheels in docker/wheels (PIP_ARGS="--no-index --find-links /wheels");
# `make compose-test` does both.
ARG BASE_IMAGE=python:3.11-slim
ARG BUILD_IMAGE=${BASE_IMAGE}

FROM ${BUILD_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG PIP_ARGS=""
ARG EXTRAS=maps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# gcc builds the optional C kernels (common/compute/*.c); the package falls back to a portable path without it
RUN command -v gcc >/dev/null || (apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*)
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# 1. the dependencies alone, read from pyproject.toml, so a code change does not reinstall torch; with them
#    those of the extras in EXTRAS (maps: umap-learn and openTSNE, which the reference maps umap and tsne
#    need; EXTRAS="" leaves them out, a smaller image in which pca is the one reference map that fits)
COPY pyproject.toml docker/requirements.py ./
COPY docker/wheels /wheels
RUN python requirements.py "${EXTRAS}" > requirements.txt \
    && pip install ${PIP_ARGS} --extra-index-url "${TORCH_INDEX}" -r requirements.txt
# 2. the project itself
COPY setup.py README.md ./
COPY common ./common
COPY worker ./worker
COPY api ./api
COPY cli ./cli
RUN pip install ${PIP_ARGS} --no-deps . \
    && cd / && python -c "import common.store.migrate, api.main, worker.celery_app, cli.main; from common.compute import _l1, _select, _ranks, _embed"
# 3. what a running aeknn never uses: torch's headers, tests and tools, pip, the symbol table of libtorch,
#    and the compiled bytecode of modules no process imports (it is compiled again for those that do)
RUN cd /opt/venv/lib/python3*/site-packages \
    && rm -rf torch/include torch/test pip setuptools \
    && find torch/bin -type f ! -name torch_shm_manager -delete \
    && strip --strip-unneeded torch/lib/libtorch_cpu.so \
    && find /opt/venv -name __pycache__ -type d -prune -exec rm -rf {} + \
    && cd / && python -c "import torch, scipy.spatial, matplotlib.pyplot, PIL.Image, api.main, cli.main, worker.tasks, \
common.study.stages, common.study.scoring, common.compute.neighbors; torch.ones(2) @ torch.ones(2)" \
    && if [ -n "${EXTRAS}" ]; then python -c "import importlib; from common.compute.references import EXTRA; \
[importlib.import_module(module) for module, _ in EXTRA.values()]"; fi

FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    AEKNN_HOST=0.0.0.0 AEKNN_PORT=8000 AEKNN_DATA_DIR=/data AEKNN_CACHE_DIR=/data
RUN useradd --create-home --uid 10001 aeknn && mkdir -p /data && chown aeknn:aeknn /data
COPY --from=build /opt/venv /opt/venv
USER aeknn
WORKDIR /home/aeknn
VOLUME ["/data"]
EXPOSE 8000
# the API's /health (database and broker answer); worker services override it in docker-compose.yml
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=4 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('AEKNN_PORT', '8000'), timeout=4)"]
CMD ["aeknn", "serve"]
