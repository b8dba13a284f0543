# syntax=docker/dockerfile:1
# latentserve image: one binary, ENTRYPOINT latentserve, the subcommand is the first argument
# (router | prefill | decode | serve | make-test-model | ...). k8s/ runs it.
#   docker build -t latentserve:dev .
# The default build is the CPU backend. A CUDA image (--backend cuda) needs nvcc in the build
# stage and the CUDA runtime in the final one: pass BUILD_IMAGE / RUNTIME_IMAGE of a
# Debian-bookworm-based CUDA image and CMAKE_ARGS=-DLATENTSERVE_CUDA=ON (docs/operations.md).

ARG BUILD_IMAGE=debian:bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---- build: the same packages as scripts/install_deps.sh (compilers, gRPC, protobuf, abseil,
# PCRE2; gtest/benchmark because the test folders configure with the tree) ----
FROM ${BUILD_IMAGE} AS build
ARG CMAKE_ARGS=""
# `latentserve --version` names this revision (.git stays out of the context):
#   docker build --build-arg LATENTSERVE_GIT_REVISION=$(git describe --always --dirty) .
ARG LATENTSERVE_GIT_REVISION=unknown
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ninja-build cmake g++ pkg-config \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler \
      libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev libpcre2-dev \
      prometheus-cpp-dev libcivetweb-dev libcpp-httplib-dev nlohmann-json3-dev libxxhash-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo ${CMAKE_ARGS} \
 && cmake --build /build --target latentserve \
 && strip --strip-debug /build/bin/latentserve

# ---- runtime: the shared libraries latentserve links, nothing else ----
FROM ${RUNTIME_IMAGE} AS runtime
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623 libpcre2-8-0 \
      libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libcivetweb1 libcpp-httplib0.11 libxxhash0 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 latentserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin latentserve \
 && mkdir -p /models \
 && chown 10001:10001 /models
COPY --from=build /build/bin/latentserve /usr/local/bin/latentserve
# Numeric, so the kubelet can check runAsNonRoot without resolving names.
USER 10001:10001
# gRPC (router / workers) and metrics.
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/latentserve"]
CMD ["--help"]
