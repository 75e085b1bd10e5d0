# payments-shim, built and run on Debian bookworm's own packages with the same install script
# `make test` uses.  Build from the repository root:
#
#   docker build -f docker/shim.Dockerfile -t payments-shim .
#
# Configure it with PAYMENTS_SHIM_* variables (see `payments-shim --help`) and libpq's PG*
# variables; the password is best given as a file, with PGPASSFILE.

FROM debian:bookworm-slim AS build
RUN mkdir -p /etc/postgresql-common/createcluster.d \
	&& echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/no-main-cluster.conf
COPY scripts/install-deps.sh /src/scripts/install-deps.sh
RUN /src/scripts/install-deps.sh --build
COPY . /src
WORKDIR /src
RUN rm -f shim/payments-shim && make shim/payments-shim

FROM debian:bookworm-slim
COPY scripts/install-deps.sh /usr/local/lib/payments/install-deps.sh
RUN /usr/local/lib/payments/install-deps.sh --shim-runtime \
	&& rm -rf /var/lib/apt/lists/* \
	&& useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin payments-shim
COPY --from=build /src/shim/payments-shim /usr/local/bin/payments-shim
COPY docker/shim-ready.sh /usr/local/bin/payments-shim-ready

# listen on all interfaces of the container; publish the port on the host's loopback or a
# private network, with TLS in front (or PAYMENTS_SHIM_TLS_CERT/PAYMENTS_SHIM_TLS_KEY, which the
# health check follows)
ENV PAYMENTS_SHIM_LISTEN=0.0.0.0:8065
USER payments-shim
EXPOSE 8065
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
	CMD ["/usr/local/bin/payments-shim-ready"]
ENTRYPOINT ["/usr/local/bin/payments-shim"]
