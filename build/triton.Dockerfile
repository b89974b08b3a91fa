# syntax=docker/dockerfile:1
# Triton from NVIDIA's NGC container, serving a model repository with Triton's own backends (no
# python backend): `make engine` writes both under var/ngc/ (quantize/ngc_repository.py).
#   GPU (default): var/ngc/model_repository_gpu  tensorrt_plan; needs 1/model.plan, built with the
#                  TensorRT of this image's release on a GPU machine (make engine TARGET=gpu)
#   CPU:           var/ngc/model_repository_cpu  onnxruntime_onnx, the INT8 Q/DQ ONNX as validated
# Build from the repository root:
#   docker build -f build/triton.Dockerfile -t interest-triton:gpu .
#   docker build -f build/triton.Dockerfile --build-arg MODEL_REPOSITORY=var/ngc/model_repository_cpu \
#     -t interest-triton:cpu .
# 24.10 carries Triton 2.51, the release the CPU stack is tested against (nvidia-pytriton 0.7.0).
# Validated offline only (hadolint, tests/unit/test_deployment.py); never built here: docs/deployment.md.
FROM nvcr.io/nvidia/tritonserver:24.10-py3
ARG MODEL_REPOSITORY=var/ngc/model_repository_gpu
# triton-server (uid 1000) is the unprivileged user NVIDIA's image ships.
COPY --chown=1000:1000 ${MODEL_REPOSITORY}/ /models/
USER 1000:1000
# HTTP (readiness: /v2/health/ready), gRPC (the gateway), Prometheus metrics.
EXPOSE 8000 8001 8002
# python3 is in the -py3 image; curl may not be.
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=3)"]
# The image's entrypoint (nvidia_entrypoint.sh) stays; it execs this.
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=none", \
     "--strict-readiness=true", "--exit-on-error=true", "--log-info=true"]
