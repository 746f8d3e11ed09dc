# The same runtime image as Dockerfile, from binaries already built on this host
# (`cargo build --release --locked --bins`), for hosts that cannot pull the Rust
# builder image (CI here: deploy/test/compose). Select it with
#   OCS_DOCKERFILE=deploy/docker/prebuilt.Dockerfile docker compose build
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUNTIME_IMAGE}
COPY target/release/ocs target/release/ocs-registry target/release/ocs-operation-monitor \
     target/release/ocs-fake-data-agent target/release/ocs-barebones-agent target/release/ocs-web \
     target/release/ocs-host-manager /usr/local/bin/
USER 65532:65532
ENTRYPOINT []
CMD ["ocs", "--help"]
