# syntax=docker/dockerfile:1
# Build stage: cgo stays enabled because the SQL parser (pg_query_go, used
# by the masking rewrite) is C code.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=1 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/pgveil .

# Runtime stage: a small glibc image with CA certificates, no shell, and a
# non-root user (uid 65532).
FROM gcr.io/distroless/base-debian12:nonroot
COPY --from=build /out/pgveil /usr/local/bin/pgveil
USER 65532:65532
EXPOSE 6432 9187
ENV PGVEIL_LISTEN=0.0.0.0:6432 PGVEIL_ADMIN_LISTEN=0.0.0.0:9187
# The image has no shell or curl: pgveil asks its own /healthz (it reads
# PGVEIL_ADMIN_LISTEN like serve does).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
	CMD ["/usr/local/bin/pgveil", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/pgveil"]
CMD ["serve"]
