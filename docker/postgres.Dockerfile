# PostgreSQL 15 with pg_cron and the payments extension, from Debian bookworm's own packages
# and the same install script `make test` uses.  Build from the repository root:
#
#   docker build -f docker/postgres.Dockerfile -t payments-postgres .
#
# On first start (empty volume) the entrypoint creates the cluster, database "payments" with
# pg_cron and payments, and the shim's login role payments_shim (a member of payments_ingest
# only), whose password it reads from PAYMENTS_SHIM_PASSWORD_FILE or PAYMENTS_SHIM_PASSWORD.

FROM debian:bookworm-slim AS build
# postgresql-common must not create a default cluster in the image
RUN mkdir -p /etc/postgresql-common/createcluster.d \
	&& echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/no-main-cluster.conf
COPY scripts/install-deps.sh /src/scripts/install-deps.sh
RUN /src/scripts/install-deps.sh --build
COPY . /src
WORKDIR /src
RUN make clean && make && make install DESTDIR=/out

FROM debian:bookworm-slim
RUN mkdir -p /etc/postgresql-common/createcluster.d \
	&& echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/no-main-cluster.conf
COPY scripts/install-deps.sh /usr/local/lib/payments/install-deps.sh
RUN /usr/local/lib/payments/install-deps.sh --runtime \
	&& rm -rf /var/lib/apt/lists/* \
	&& install -d -o postgres -g postgres -m 2775 /var/run/postgresql \
	&& install -d -o postgres -g postgres -m 700 /var/lib/postgresql/data
COPY --from=build /out/ /
COPY docker/postgres-entrypoint.sh /usr/local/bin/payments-postgres-entrypoint

ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
	PGDATA=/var/lib/postgresql/data
VOLUME /var/lib/postgresql/data
USER postgres
EXPOSE 5432
# SIGINT is PostgreSQL's fast shutdown: sessions end, the checkpoint is written
STOPSIGNAL SIGINT
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
	CMD pg_isready -q -h /var/run/postgresql -d payments || exit 1
ENTRYPOINT ["payments-postgres-entrypoint"]
CMD ["postgres"]
