# Test image for usertcp: `podman build -t usertcp-test .`, then `scripts/test-in-container`
# (or `podman run --rm --privileged usertcp-test`). The integration tests need --privileged for
# network namespaces, TUN devices and nftables; nothing else leaves the container.
ARG BASE=docker.io/library/python:3.11-slim
FROM ${BASE}

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        iproute2 curl netcat-openbsd nftables \
    && rm -rf /var/lib/apt/lists/*

# The venv lives outside the checkout, so a checkout mounted over /src at run time reuses it.
ENV USERTCP_VENV=/opt/venv
WORKDIR /src

# Dependencies first, so that a change to the code alone does not reinstall them.
COPY pyproject.toml README.md ./
COPY scripts/_venv.sh scripts/
RUN mkdir -p usertcp && touch usertcp/__init__.py \
    && bash -c '. scripts/_venv.sh && usertcp_venv test'

COPY . .
CMD ["bash", "scripts/test"]
