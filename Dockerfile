# digit-service: the FastAPI app and the committed models.
#   docker compose build                          (or: docker build -t digit-service .)
#   docker build --build-arg VARIANT=gpu -t digit-service:gpu .   (TensorFlow with CUDA)
#   docker build --build-arg VARIANT=train -t digit-service:train .  (TensorFlow, to train)
# The default (cpu) image serves with LiteRT and holds no TensorFlow at all.
# Air-gapped: `pip download` the dependencies into ./wheelhouse on a connected machine,
# then build with --build-arg PIP_OFFLINE=1 (see README, "Docker").
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG VARIANT=cpu
ARG PIP_OFFLINE=0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
RUN python3 -m venv /opt/venv
# Dependencies before code: editing the app doesn't reinstall TensorFlow.
COPY pyproject.toml ./
COPY wheelhouse/ /wheelhouse/
RUN python3 -c "import sys, tomllib; project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extra = project['optional-dependencies'].get(sys.argv[1], []); \
print('\n'.join(project['dependencies'] + extra))" "${VARIANT}" > requirements.txt \
 && if [ "${PIP_OFFLINE}" = "1" ]; then set -- --no-index --find-links /wheelhouse; fi \
 && /opt/venv/bin/pip install "$@" -r requirements.txt

FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DIGITS_MODEL_DIR=/srv/models \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    DIGITS_HOST=0.0.0.0 \
    DIGITS_PORT=8000
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin digits
WORKDIR /srv
COPY --from=build /opt/venv /opt/venv
COPY digit_contract/ digit_contract/
COPY training/ training/
COPY app/ app/
# The committed models; mount a volume on /srv/models to serve others.
COPY models/ models/
# The compiled preprocessing loops (app/kernels.py), built now so that a container does not
# spend its first seconds compiling them; the cache stays the service's to write, for a
# machine whose CPU differs from this one's.
RUN python -c "from app import kernels; kernels.warm_up()" \
 && chown -R 10001 /tmp/numba-cache
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DIGITS_PORT', '8000'), timeout=2)"]
# uvicorn stops accepting on SIGTERM and lets in-flight requests finish (up to 30 s).
STOPSIGNAL SIGTERM
CMD ["python", "-m", "app"]
