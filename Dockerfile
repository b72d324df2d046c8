# tunneler sidecar image: intercept mode (default) or host mode (TUNNELER_MODE=run-host).
#   docker build -t tunneler .
# Recipes (compose, Kubernetes) and the required privileges: docs/operations.md.
# Intercept mode needs exactly NET_ADMIN and /dev/net/tun, never --privileged or host network.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tunneler ./tunneler
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="tunneler" \
      org.opencontainers.image.description="userspace zero-trust tunneler speaking OpenZiti's protocols"
RUN groupadd --system --gid 10001 tunneler \
    && useradd --system --uid 10001 --gid tunneler --home-dir /var/lib/tunneler \
       --shell /usr/sbin/nologin tunneler \
    && install -d -m 0700 -o tunneler -g tunneler /var/lib/tunneler \
    && install -d -m 0750 -o tunneler -g tunneler /run/tunneler
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels tunneler && rm -rf /wheels
COPY docker/entrypoint.sh /usr/local/bin/tunneler-entrypoint

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TUNNELER_MODE=run
VOLUME ["/var/lib/tunneler"]
# Non-root by default (host mode needs nothing). Intercept mode: run as user 0 with
# cap_drop ALL + cap_add NET_ADMIN (runtimes raise added capabilities only for uid 0).
USER tunneler
ENTRYPOINT ["/usr/local/bin/tunneler-entrypoint"]
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["tunneler", "status", "--control-socket", "/run/tunneler/tunneler.sock"]
