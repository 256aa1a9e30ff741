/*
 * http.h — the operator's HTTP endpoint (KAFSCALE_METRICS_ADDR), served by
 * libmicrohttpd:
 *
 *   GET /metrics   200, the registry in the Prometheus text format
 *                  (Content-Type: text/plain; version=0.0.4)
 *   GET /healthz   200 "ok" while the process runs
 *   GET /readyz    200 "ready" when the readiness callback says so,
 *                  else 503 "not ready: <reason>"
 *
 * Anything else: 404 (unknown path) or 405 (a method other than GET/HEAD).
 *
 * Threads: one thread owned by libmicrohttpd (its "internal polling
 * thread") accepts connections and runs every handler; handlers do not
 * block (the readiness callback must answer from cached state, and
 * rendering /metrics only reads atomics).  At most 64 connections are
 * served at once; an idle connection is closed after 10 s.
 *
 * The listening socket is bound by ks_http_start() itself, so a port that
 * cannot be bound is reported at start-up with the system's reason (the
 * caller then refuses to start: no silent fallback).
 */
#ifndef KS_HTTP_HTTP_H
#define KS_HTTP_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "metrics/metrics.h"

/* Readiness: true when ready; otherwise false with a short reason for the
 * operator in why (NUL-terminated, at most len bytes).  Runs on the HTTP
 * thread for each /readyz request: must be quick and must not block. */
typedef bool(ks_ready_fn)(void *opaque, char *why, size_t len);

typedef struct ks_http ks_http_t;

/* Binds host:port (host "" = all interfaces, IPv4 preferred as for the
 * Kafka listener; port 0 = any free port) and starts serving `metrics`
 * (borrowed) and the readiness callback (`ready` may be NULL: always
 * ready).  Returns the server, or NULL after logging what is wrong and how
 * to fix it.  `opaque` must stay valid until ks_http_stop() returns. */
ks_http_t *ks_http_start(const char *host, int port, ks_metrics_t *metrics, ks_ready_fn *ready, void *opaque);

/* The bound port (useful with port 0). */
int ks_http_port(const ks_http_t *h);

/* Stops serving: closes the listener and every connection and joins the
 * HTTP thread (in-progress handlers finish first).  NULL is ignored. */
void ks_http_stop(ks_http_t *h);

#endif
