#!/usr/bin/env bash
# Base images built from Debian's packages (mmdebstrap | docker import), for a machine that cannot pull
# from an image registry. Each is built once and kept; compose and the Dockerfile take their names from
# variables, so a user with a registry never needs this.
#   docker/local-images.sh            prints the variables to export (BASE_IMAGE=..., POSTGRES_IMAGE=...)
set -euo pipefail
cd "$(dirname "$0")"
SUITE=${DEBIAN_SUITE:-bookworm}

build() {  # name, then mmdebstrap options, then --change lines after --
  local name=$1; shift
  local opts=() changes=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do opts+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  while [ $# -gt 0 ]; do changes+=(--change "$1"); shift; done
  if docker image inspect "$name" >/dev/null 2>&1; then
    echo "image $name: kept" >&2
    return
  fi
  local t0=$SECONDS
  # docker import tags whatever the pipe gave it, an empty stream too: a failed mmdebstrap (missing, or no
  # mirror) must not leave an empty image behind for the next run to keep
  if ! mmdebstrap --variant=minbase --quiet "${opts[@]}" "$SUITE" - | docker import "${changes[@]}" - "$name" >/dev/null
  then
    docker rmi -f "$name" >/dev/null 2>&1 || true
    echo "image $name: mmdebstrap failed (apt-get install mmdebstrap; a Debian mirror must answer)" >&2
    exit 1
  fi
  echo "image $name: built from Debian $SUITE in $((SECONDS - t0)) s" >&2
}

LEAN=(--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*')
build aeknn-local/python:3.11 --include=python3,python3-venv,ca-certificates,passwd "${LEAN[@]}" \
  -- 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' 'CMD ["python3"]'
build aeknn-local/python-build:3.11 --include=python3,python3-venv,python3-dev,gcc,libc6-dev,ca-certificates,passwd \
  -- 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' 'CMD ["python3"]'
build aeknn-local/redis:7 --include=redis-server \
  -- 'ENV PATH=/usr/bin:/bin' 'WORKDIR /data' 'CMD ["redis-server", "--protected-mode", "no"]'
build aeknn-local/postgres:15 --include=postgresql,postgresql-client \
  --customize-hook='copy-in postgres-entrypoint.sh /usr/local/bin' \
  --customize-hook='chroot "$1" sh -c "mkdir -p /var/lib/postgresql/data && chown -R postgres:postgres /var/lib/postgresql"' \
  -- 'ENV PATH=/usr/local/bin:/usr/bin:/bin' 'ENV PGHOST=/var/lib/postgresql' 'USER postgres' \
     'ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]'

cat <<VARS
BASE_IMAGE=aeknn-local/python:3.11
BUILD_IMAGE=aeknn-local/python-build:3.11
REDIS_IMAGE=aeknn-local/redis:7
POSTGRES_IMAGE=aeknn-local/postgres:15
VARS
