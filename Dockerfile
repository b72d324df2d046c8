# tunneler sidecar image: intercept mode (default) or host mode (TUNNELER_MODE=run-host).
#   docker build -t tunneler .
#   podman build --format docker -t tunneler .            (docker format keeps the HEALTHCHECK)
# BASE is any image with Python 3.11+ and its venv module: python:3.11-slim by default, or a
# Debian root made with debootstrap where no registry is reachable (docs/operations.md).
# tunneler lives in a virtual environment (/opt/tunneler): Debian's own python refuses
# `pip install` into the system (PEP 668). PIP_CERT/PIP_INDEX_URL, when given as build
# arguments, reach pip during the build only.
# Recipes (compose, Kubernetes) and the required privileges: docs/operations.md.
# Intercept mode needs exactly NET_ADMIN and /dev/net/tun, never --privileged or host network.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ARG PIP_CERT
ARG PIP_INDEX_URL
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY tunneler ./tunneler
# every dependency at the version CI tested (requirements.lock, scripts/lock.sh)
RUN python3 -m venv /opt/tunneler \
    && PIP_CONSTRAINT=/src/requirements.lock /opt/tunneler/bin/pip install --no-cache-dir \
       --disable-pip-version-check . \
    && find /opt/tunneler -name __pycache__ -prune -exec rm -rf {} +

FROM ${BASE}
LABEL org.opencontainers.image.title="tunneler" \
      org.opencontainers.image.description="userspace zero-trust tunneler speaking OpenZiti's protocols"
RUN groupadd --system --gid 10001 tunneler \
    && useradd --system --uid 10001 --gid tunneler --home-dir /var/lib/tunneler \
       --shell /usr/sbin/nologin tunneler \
    && install -d -m 0700 -o tunneler -g tunneler /var/lib/tunneler \
    && install -d -m 0750 -o tunneler -g tunneler /run/tunneler
COPY --from=build /opt/tunneler /opt/tunneler
RUN ln -s /opt/tunneler/bin/tunneler /usr/local/bin/tunneler
COPY docker/entrypoint.sh /usr/local/bin/tunneler-entrypoint

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TUNNELER_MODE=run
VOLUME ["/var/lib/tunneler"]
# Non-root by default (host mode needs nothing). Intercept mode: run as user 0 with
# cap_drop ALL + cap_add NET_ADMIN (runtimes raise added capabilities only for uid 0).
USER tunneler
ENTRYPOINT ["/usr/local/bin/tunneler-entrypoint"]
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["tunneler", "status", "--control-socket", "/run/tunneler/tunneler.sock"]
