# The imgsearch image: one binary for the controller, the ingest Jobs and the search service,
# with ONNX Runtime's library and the model beside it. Non-root, no shell, no package manager.
#
#   docker build -t ghcr.io/imgsearch/imgsearch:v0.1.0 .
#
# Not built in this project's CI (no Docker engine there): tests/container_image.rs assembles
# the same runtime file tree from this file's final stage and runs the binary from it.

# --- build: the release binary -----------------------------------------------------------
FROM rust:1.92-bookworm AS build
# libjpeg-turbo is built from the source the turbojpeg crate pins: cmake, and nasm for its SIMD.
RUN apt-get update && apt-get install -y --no-install-recommends cmake nasm && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole checkout minus .dockerignore: the binary embeds assets/, migrations/ and crds/.
COPY . .
RUN cargo build --release --locked --bin imgsearch

# --- onnxruntime: the shared library from the same PyPI wheel the tests use ----------------
FROM python:3.11-slim-bookworm AS onnxruntime
RUN pip install --no-cache-dir --target /wheel onnxruntime==1.32.0

# --- runtime: glibc, libstdc++ and libgcc only (all that the binary and ONNX Runtime need) ---
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/imgsearch /usr/local/bin/imgsearch
COPY --from=build /src/model/efficientnet-lite0.onnx /usr/share/imgsearch/model/efficientnet-lite0.onnx
COPY --from=build /src/model/LICENSE /usr/share/imgsearch/model/LICENSE
COPY --from=onnxruntime /wheel/onnxruntime/capi/libonnxruntime.so.1.32.0 /usr/lib/imgsearch/libonnxruntime.so.1.32.0
ENV ORT_DYLIB_PATH=/usr/lib/imgsearch/libonnxruntime.so.1.32.0
ENV IMGSEARCH_MODEL_DIR=/usr/share/imgsearch/model
# distroless's "nonroot" user; the manifests and the pods the controller creates run as it too.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/imgsearch"]
CMD ["--help"]
