# syntax=docker/dockerfile:1
# DeepLabV3+ segmentation server.
#
#   GPU image (default target):  docker build -t deeplab-serve:gpu .
#   CPU-only image:              docker build --target cpu -t deeplab-serve:cpu .
#
# The built-in model is package data (model/weights/), so both images serve without any download.
# Both listen on 8000 (HTTP) and 8001 (gRPC, the Open Inference Protocol; DEEPLAB_GRPC_PORT=0 turns it
# off):  docker run --gpus all -p 8000:8000 -p 8001:8001 deeplab-serve:gpu
# The GPU image carries every backend: torch (CUDA), onnxruntime-gpu and TensorRT. A TensorRT
# engine only loads on the TensorRT version and GPU type it was built with: build engines with this
# same image (see deploy/README.md).

ARG PYTHON_IMAGE=python:3.12-slim-bookworm
# torch wheels on PyPI for 2.11 are CUDA 13 builds; onnxruntime-gpu 1.31 and tensorrt-cu13 match.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04
ARG TORCH_VERSION=2.11.0
ARG ONNX_VERSION=1.23.2
ARG ONNXSCRIPT_VERSION=0.7.2
ARG ONNXRUNTIME_VERSION=1.32.0
ARG ONNXRUNTIME_GPU_VERSION=1.31.1
ARG TENSORRT_VERSION=10.16.1.11

# ---- wheel: the project wheel, built weights and all --------------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY service ./service
COPY export ./export
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- cpu-venv: runtime virtualenv for the CPU image -----------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu-venv
ARG TORCH_VERSION
ARG ONNX_VERSION
ARG ONNXSCRIPT_VERSION
ARG ONNXRUNTIME_VERSION
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
        "onnx==${ONNX_VERSION}" "onnxscript==${ONNXSCRIPT_VERSION}" "onnxruntime==${ONNXRUNTIME_VERSION}"

# ---- cpu: final CPU image -------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu
LABEL org.opencontainers.image.title="deeplab-serve (CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 deeplab \
    && useradd --system --uid 10001 --gid deeplab --home-dir /nonexistent --no-create-home deeplab \
    && mkdir -p /models /var/cache/deeplab \
    && chown deeplab:deeplab /var/cache/deeplab
COPY --from=cpu-venv /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/var/cache/deeplab \
    TORCH_HOME=/var/cache/deeplab/torch \
    DEEPLAB_CACHE_DIR=/var/cache/deeplab \
    DEEPLAB_DEVICE=cpu \
    DEEPLAB_HOST=0.0.0.0 \
    DEEPLAB_PORT=8000 \
    DEEPLAB_GRPC_PORT=8001
USER 10001:10001
# HTTP (own API, Open Inference Protocol /v2, /metrics) and the Open Inference Protocol over gRPC
EXPOSE 8000 8001
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DEEPLAB_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["python", "-m", "service"]

# ---- gpu-venv: runtime virtualenv for the GPU image (same base as the final stage) ---------------
FROM ${CUDA_IMAGE} AS gpu-venv
ARG TORCH_VERSION
ARG ONNX_VERSION
ARG ONNXSCRIPT_VERSION
ARG ONNXRUNTIME_GPU_VERSION
ARG TENSORRT_VERSION
ENV DEBIAN_FRONTEND=noninteractive PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}" "tensorrt-cu13==${TENSORRT_VERSION}" \
        "onnxruntime-gpu[cuda,cudnn]==${ONNXRUNTIME_GPU_VERSION}"
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl "onnx==${ONNX_VERSION}" "onnxscript==${ONNXSCRIPT_VERSION}"

# ---- gpu: final GPU image (default target) -------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu
LABEL org.opencontainers.image.title="deeplab-serve (GPU)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 deeplab \
    && useradd --system --uid 10001 --gid deeplab --home-dir /nonexistent --no-create-home deeplab \
    && mkdir -p /models /var/cache/deeplab \
    && chown deeplab:deeplab /var/cache/deeplab
COPY --from=gpu-venv /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/var/cache/deeplab \
    TORCH_HOME=/var/cache/deeplab/torch \
    DEEPLAB_CACHE_DIR=/var/cache/deeplab \
    DEEPLAB_HOST=0.0.0.0 \
    DEEPLAB_PORT=8000 \
    DEEPLAB_GRPC_PORT=8001
USER 10001:10001
# HTTP (own API, Open Inference Protocol /v2, /metrics) and the Open Inference Protocol over gRPC
EXPOSE 8000 8001
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DEEPLAB_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["python", "-m", "service"]
