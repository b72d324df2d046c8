# An unmodified application image for the sidecar test: curl and the official openai client,
# nothing that knows about tunneler. Built from the same Debian base as the tunneler image.
ARG BASE
FROM ${BASE}
ARG PIP_CERT
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/app && /opt/app/bin/pip install --no-cache-dir -q openai
