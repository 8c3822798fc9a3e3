#!/usr/bin/env bash
# Build the Docker image offline and smoke-test `docker compose up` on this machine.
#
# This machine kind has no Docker engine running, no registry access and no bridge
# networking, so this script: installs docker.io and debootstrap if missing; starts a
# private dockerd (own socket and data root, --bridge=none --iptables=false); builds a
# Debian bookworm base image with debootstrap instead of pulling python:3.11-slim; fills
# ./wheelhouse from PyPI on the host and builds with PIP_OFFLINE=1; runs the compose file
# with deploy/compose.smoke.yml (host network, bound to 127.0.0.1); POSTs a digit; and
# stops everything it started. Set KEEP_DOCKER_STATE=1 to keep the images for a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
state=${DIGITS_DOCKER_STATE:-/var/lib/digits-docker}
socket=/run/digits-docker.sock
base_image=digits-base:bookworm
port=${SMOKE_PORT:-18000}
python=${PYTHON:-$repo/.venv/bin/python}
export DOCKER_HOST=unix://$socket DOCKER_BUILDKIT=0 SMOKE_PORT=$port
compose="$($python -c 'import compose, os; print(os.path.dirname(compose.__file__))')/docker-compose"
compose_files=(-f docker-compose.yml -f deploy/compose.smoke.yml)

log() { printf '\n== %s\n' "$*"; }
now() { $python -c 'import time; print(time.time())'; }

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    log "installing docker.io and debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
fi

log "starting a private dockerd (no bridge, no iptables)"
mkdir -p "$state"
dockerd --data-root "$state" --exec-root /run/digits-docker --pidfile /run/digits-dockerd.pid \
    --host "unix://$socket" --bridge=none --iptables=false --ip6tables=false \
    >/tmp/digits-dockerd.log 2>&1 &
dockerd_pid=$!
cleanup() {
    "$compose" "${compose_files[@]}" down --timeout 40 >/dev/null 2>&1 || true
    kill "$dockerd_pid" 2>/dev/null || true
    wait "$dockerd_pid" 2>/dev/null || true
    # dockerd leaves its network namespace mounted under its exec root.
    find /run/digits-docker -type f -path '*/netns/*' -exec umount {} \; 2>/dev/null || true
    rm -rf /run/digits-docker /run/digits-dockerd.pid "$socket"
    if [ "${KEEP_DOCKER_STATE:-0}" != 1 ]; then rm -rf "$state"; fi
}
trap cleanup EXIT
for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
docker info >/dev/null

if ! docker image inspect "$base_image" >/dev/null 2>&1; then
    log "building $base_image from Debian packages (debootstrap)"
    rootfs=$(mktemp -d /tmp/digits-rootfs.XXXXXX)
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" \
        http://deb.debian.org/debian >/tmp/digits-debootstrap.log
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python3"]' - "$base_image" >/dev/null
    rm -rf "$rootfs"
fi

log "downloading wheels for an offline build into ./wheelhouse"
$python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
    >/tmp/digits-requirements.txt
$python -m pip download --quiet --only-binary=:all: --dest wheelhouse \
    -r /tmp/digits-requirements.txt

log "docker build (classic builder, host network)"
build_started=$(date +%s)
docker build --network host --build-arg BASE_IMAGE=$base_image --build-arg PIP_OFFLINE=1 \
    -t digit-service:latest . >/tmp/digits-docker-build.log
build_seconds=$(( $(date +%s) - build_started ))
image_bytes=$(docker image inspect -f '{{.Size}}' digit-service:latest)

log "docker compose up -d --wait (port $port on 127.0.0.1)"
up_started=$(now)
"$compose" "${compose_files[@]}" up -d api
# Cold start: from `docker compose up` until /readyz answers 200 (polled every 20 ms).
ready_seconds=$($python - "$port" "$up_started" <<'PY'
import sys, time, urllib.request
port, started = sys.argv[1], float(sys.argv[2])
while time.time() - started < 120:
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200:
            break
    except OSError:
        time.sleep(0.02)
print(round(time.time() - started, 2))
PY
)
"$compose" "${compose_files[@]}" up -d --wait api
up_seconds=$($python -c "print(round($(now) - $up_started, 1))")
# The server process is the container's first process (one per container by default).
server_pid=$(docker inspect -f '{{.State.Pid}}' "$("$compose" "${compose_files[@]}" ps -q api)")
server_rss_mib=$(awk '/^VmRSS/ {print int($2 / 1024)}' "/proc/$server_pid/status")

log "smoke test: POST a digit to /predict"
$python - "$port" <<'PY'
import io, json, sys, urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

port = sys.argv[1]
data = Path("../shared/data/mnist-train.npz")
if data.is_file():
    with np.load(data) as mnist:
        digit, label = mnist["x_train"][-1], int(mnist["y_train"][-1])
else:  # a drawn "1"
    digit, label = np.zeros((28, 28), np.uint8), 1
    digit[4:24, 13:16] = 255
page = Image.fromarray(255 - digit).resize((280, 280))  # dark on white, as people send it
buffer = io.BytesIO()
page.save(buffer, format="JPEG")
request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=buffer.getvalue(),
                                 headers={"Content-Type": "image/jpeg"})
answer = json.load(urllib.request.urlopen(request, timeout=10))
digit_seen = answer["predictions"][0]["digit"]
models = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/models", timeout=10))
ready = [m["name"] for m in models["models"] if m["status"] == "ready"]
print(f"predicted {digit_seen} for a {label} ({answer['model']} v{answer['version']}); "
      f"ready: {', '.join(ready)}")
assert digit_seen == label and len(ready) == 3, "smoke test failed"
PY

log "result"
echo "image size: $image_bytes bytes ($((image_bytes / 1000000)) MB)"
echo "build: ${build_seconds} s"
echo "up to ready (/readyz 200): ${ready_seconds} s"
echo "up to healthy: ${up_seconds} s"
echo "server process RSS, three models ready: ${server_rss_mib} MiB"
echo "smoke test: passed"
