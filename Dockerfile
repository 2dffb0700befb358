# One image for the API, the workers and the init step; docker-compose.yml gives each its command.
# PyTorch's CPU wheels by default (a small image); the GPU override builds with a CUDA wheel index:
#   docker compose -f docker-compose.yml -f docker-compose.gpu.yml up
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# gcc builds the optional SAD kernel (common/compute/_l1.c); the package falls back to a portable path without it
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# 1. the dependencies alone, read from pyproject.toml: a code change does not reinstall torch
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install --extra-index-url "${TORCH_INDEX}" -r requirements.txt
# 2. the project itself
COPY setup.py README.md ./
COPY common ./common
COPY worker ./worker
COPY api ./api
COPY cli ./cli
RUN pip install --no-deps . && python -c "import common.store.migrate, api.main, worker.celery_app, cli.main"

FROM python:${PYTHON_VERSION}-slim
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
