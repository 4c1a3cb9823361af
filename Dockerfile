# ser-ray on Ray's own images, for KubeRay (deploy/kuberay/) or any Ray cluster.
#   docker build -t ser-ray:cpu .                                   # CPU nodes
#   docker build -t ser-ray:gpu --build-arg VARIANT=gpu .           # GPU nodes (CUDA torch)
# The project lives in /opt/ser-ray; jobs/ holds the `ray job submit` entry points.
ARG VARIANT=cpu
ARG RAY_VERSION=2.60.0
FROM rayproject/ray:${RAY_VERSION}-py311-cpu AS base-cpu
# CPU wheels of torch and torchvision: the default index carries CUDA builds
ENV TORCH_INDEX=https://download.pytorch.org/whl/cpu
FROM rayproject/ray:${RAY_VERSION}-py311-gpu AS base-gpu
ENV TORCH_INDEX=https://pypi.org/simple

FROM base-${VARIANT}
USER root
RUN apt-get update && apt-get install -y --no-install-recommends libsndfile1 ffmpeg \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/ser-ray
COPY pyproject.toml README.md ./
COPY ser_ray ser_ray
COPY jobs jobs
COPY configs configs
# torch first, pinned, from the variant's index; then the project (its pins match)
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" torch==2.13.0 torchvision==0.28.0 \
    && pip install --no-cache-dir . \
    && python -m ser_ray.features.warmup \
    && chown -R ray /opt/ser-ray
USER ray
