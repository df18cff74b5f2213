# syntax=docker/dockerfile:1
#
# One image for both halves of Breakwater:
#   operator:  breakwater operator ...   (the Helm chart's Deployment)
#   sidecar:   breakwater proxy ...      (injected by the operator into client pods)
#
# Build:  docker build -t ghcr.io/breakwater-dev/breakwater:0.1.0 .
#
# The base image is pinned to a full Python patch release. Where a registry is reachable, pin the
# digest too (PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:...), e.g. with Renovate.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
# The build stage: the same Python with a C compiler and its headers, to compile the hot path.
ARG BUILD_IMAGE=python:3.11.13-bookworm
# 1: the sidecar's hot path compiled by mypyc (setup.py, [tool.breakwater.compile] in pyproject.toml);
# 0: pure Python, the same code interpreted.
ARG COMPILE=1

# --- build: wheels for breakwater and every dependency, installed into a self-contained venv --------
FROM ${BUILD_IMAGE} AS build
ARG COMPILE

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the build needs (see .dockerignore): metadata first, then the sources.
COPY pyproject.toml setup.py ./
COPY operator/ operator/

# /opt/build holds the compiler's side (mypy, setuptools) and never reaches the image: breakwater's own
# wheel is built there again with BREAKWATER_COMPILE, and only /wheels is installed into the venv.
# Byte-compiled here: at run time the root filesystem is read-only and nothing may write .pyc files.
# pip itself is removed from the result: nothing installs packages at run time.
RUN python -m venv /opt/build \
 && /opt/build/bin/pip wheel --wheel-dir /wheels '.[fast,compile]' \
 && /opt/build/bin/pip install --no-index --find-links /wheels 'breakwater[fast,compile]' \
 && rm /wheels/breakwater-*.whl \
 && BREAKWATER_COMPILE="${COMPILE}" /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && python -m venv /opt/breakwater \
 && /opt/breakwater/bin/pip install --no-index --find-links /wheels 'breakwater[fast]' \
 && /opt/breakwater/bin/pip uninstall --yes pip setuptools \
 && /opt/breakwater/bin/python -m compileall -q -j 0 /opt/breakwater/lib \
 && /opt/breakwater/bin/breakwater --help >/dev/null \
 && /opt/breakwater/bin/breakwater --version \
 && { [ "${COMPILE}" != 1 ] || /opt/breakwater/bin/breakwater --version | grep -q '(hot path compiled)'; }

# --- runtime: the slim base, the venv, no build tools, no root ---------------------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="breakwater" \
      org.opencontainers.image.description="Breakwater operator and circuit-breaker sidecar" \
      org.opencontainers.image.source="https://github.com/breakwater-dev/breakwater" \
      org.opencontainers.image.licenses="Apache-2.0"

# Same Python as the build stage, same interpreter path: the venv's symlinks to /usr/local/bin/python3
# stay valid, and the compiled modules match its ABI.
COPY --from=build /opt/breakwater /opt/breakwater

ENV PATH=/opt/breakwater/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp

# 65532 ("nonroot" in distroless): matches runAsUser in the chart and in injected sidecars.
USER 65532:65532
WORKDIR /tmp

ENTRYPOINT ["breakwater"]
CMD ["--help"]
