# syntax=docker/dockerfile:1
#
# veil -- the production image of the transparent encrypting sidecar for Redis and S3.
#
#   docker build -t veil:0.1.0 .
#   docker run --rm --read-only --tmpfs /tmp -v veil-state:/var/lib/veil \
#     -e VEIL_KEYS_ROOT_KEY -e VEIL_KEYS_STORE=redis://keyring-redis:6379/0 \
#     -e VEIL_REDIS_UPSTREAM=redis://redis:6379/0 -e VEIL_AUDIT_PATH=stdout \
#     --network container:my-app veil:0.1.0
#
# docs/DEPLOY.md explains the image, the Kubernetes sidecar (k8s/) and monitoring.
# tests/integration/test_deploy.py checks this file's structure and runs its ENTRYPOINT, CMD and
# HEALTHCHECK commands against a real `veil serve` (no Docker engine is needed for that).
#
# Layout: a builder stage turns the source into a wheel and installs it, with its runtime
# dependencies only, into the virtualenv /opt/veil; the runtime stage is the same slim Python
# base with that virtualenv copied in. Never the `demo` extra (fakeredis, moto): the builder
# refuses to finish if either got in.

# Pin by digest in your own builds: python:3.11-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --------------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

# A C compiler for the one compiled module, the RESP fast path (proxy/redis/_fastc.pyx); it
# stays in this stage: the runtime stage gets the built virtualenv only.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# only what the wheel is built from (.dockerignore is an allow-list as well)
COPY pyproject.toml setup.py README.md ./
COPY proxy ./proxy
COPY protocols ./protocols

# The wheel, then a pip-less virtualenv holding veil and its runtime dependencies (every one
# has a manylinux wheel). The build refuses to finish without the compiled fast path (setup.py
# would otherwise skip it quietly). Byte-code is compiled here, because the runtime's root
# filesystem is read-only.
RUN pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv --without-pip /opt/veil \
 && pip --python /opt/veil/bin/python install --compile /dist/veil-*.whl \
 && /opt/veil/bin/python -c "import importlib.util as u, sys; bad = [m for m in ('fakeredis', 'moto') if u.find_spec(m)]; sys.exit(f'demo extra in the image: {bad}' if bad else 0)" \
 && /opt/veil/bin/python -c "import proxy.redis._fastc" \
 && /opt/veil/bin/veil --help >/dev/null

# --------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="veil" \
      org.opencontainers.image.description="Transparent encrypting sidecar for Redis and S3 with zero-downtime key rotation" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/DEPLOY.md"

ENV PATH=/opt/veil/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The one user (numeric, so Kubernetes' runAsNonRoot can verify it) and the one writable
# directory: the keyring's sealed local copy, a file keyring store, a file audit log. Nothing
# else is written, so the container runs with a read-only root filesystem. pip and setuptools
# leave the image: nothing installs at run time.
RUN groupadd --system --gid 10001 veil \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/veil --no-create-home \
      --shell /usr/sbin/nologin veil \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/veil \
 && python -m pip uninstall -q -y pip setuptools wheel

COPY --from=builder /opt/veil /opt/veil

WORKDIR /var/lib/veil
VOLUME ["/var/lib/veil"]
USER 10001:10001

# RESP, S3, admin (health, readiness, metrics, /v1). The defaults bind loopback: the app
# reaches veil over localhost inside a pod (or with `--network container:APP`).
EXPOSE 6380 9000 9090

# GET /healthz on the admin listener with the standard library (no curl in the image). The
# address and TLS come from veil's own config loader -- VEIL_CONFIG (or ./veil.toml) and the
# VEIL_* environment, exactly what `veil serve` reads -- and /healthz needs no token.
# Kubernetes ignores HEALTHCHECK: k8s/ declares its probes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import ssl, urllib.request as r; from proxy.config import load_settings; a = load_settings().admin; h = {'0.0.0.0': '127.0.0.1', '::': '::1'}.get(a.listen.host, a.listen.host); h = '[' + h + ']' if ':' in h else h; t = a.tls_cert is not None; r.urlopen(('https' if t else 'http') + '://' + h + ':' + str(a.listen.port) + '/healthz', timeout=4, context=ssl._create_unverified_context() if t else None)"]

# SIGTERM: stop accepting, finish in-flight requests, flush the migration checkpoint.
STOPSIGNAL SIGTERM
ENTRYPOINT ["veil"]
CMD ["serve"]
