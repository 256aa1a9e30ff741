/*
 * server.h — the Kafka listener: accepts connections, frames requests,
 * hands each to the dispatcher, writes responses back in request order.
 *
 * Threads: `io_threads` loops (net/loop.h), each running on its own thread
 * and owning the connections it accepted.  A connection is touched only by
 * its loop thread.  Requests may be completed from any thread
 * (ks_req_respond() and friends are thread-safe); the response is written by
 * the connection's loop.
 *
 * Per connection: several requests may be in flight (up to
 * max_inflight_per_conn); responses go out strictly in request order.  A
 * frame larger than max_request_bytes, or with a negative size, or a header
 * that does not parse, closes that connection only, with one log line.
 */
#ifndef KS_NET_SERVER_H
#define KS_NET_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include "config/config.h"
#include "net/loop.h"
#include "protocol/codec.h"
#include "util/arena.h"
#include "util/wbuf.h"

typedef struct ks_server ks_server_t;
typedef struct ks_conn ks_conn_t;
typedef struct ks_req ks_req_t;

/* One request in flight.  Created by the server, handed to the dispatcher,
 * and owned by the server again once a completion function below is called
 * (after which the handler must not touch it). */
struct ks_req {
        ks_req_header_t hdr;        /* parsed request header */
        const ks_api_desc_t *api;   /* NULL when the api key is unknown */
        const uint8_t *body;        /* request body (slice of the frame) */
        size_t body_len;
        void *request;              /* decoded body, set by the dispatcher (arena) */
        ks_arena_t arena;           /* freed with the request */
        int64_t received_ms;        /* monotonic */
        int64_t received_ns;        /* monotonic, precise (request latency metrics) */
        char peer[64];              /* "ip:port" of the client */

        /* Private to the server. */
        struct ks_req_cleanup *cleanups;
        ks_conn_t *conn;
        ks_req_t *next;
        uint8_t *frame;             /* owned: the whole frame, size prefix included */
        size_t produce_held;        /* frame bytes counted against the produce budget */
        ks_wbuf_t out;              /* encoded response frame */
        int state;                  /* written by the completing thread */
        bool returned;              /* completion seen by the loop (loop thread) */
};

/* Called on the connection's loop thread for each complete request. */
typedef void(ks_dispatch_fn)(void *ctx, ks_req_t *req);

/* How a request completed, as told to the completion hook. */
enum {
        KS_REQ_OUTCOME_RESPONDED = 0,   /* ks_req_respond / ks_req_respond_version */
        KS_REQ_OUTCOME_NO_RESPONSE = 1, /* ks_req_respond_none (Produce acks=0) */
        KS_REQ_OUTCOME_CLOSED = 2,      /* ks_req_close, or the response did not encode */
};

/* Called once per request when its handler has completed it, on the
 * connection's loop thread, before its response is written (the request
 * may be freed right after the call: read what you need, keep nothing).
 * Must be quick and must not block or complete requests. */
typedef void(ks_req_done_fn)(void *ctx, const ks_req_t *req, int outcome);

/* Creates the server (does not bind yet).  `cfg` is borrowed and must
 * outlive the server. */
ks_server_t *ks_server_new(const ks_config_t *cfg, ks_dispatch_fn *dispatch, void *ctx);

/* Installs the completion hook (call before ks_server_start). */
void ks_server_set_on_complete(ks_server_t *srv, ks_req_done_fn *fn, void *ctx);

/* The produce-buffer budget.  The server counts the bytes of the Produce
 * requests it holds (from their arrival until their response is written);
 * while those plus usage(ctx) (memory the handlers hold for produced data,
 * e.g. unflushed log chunks) reach `budget`, connections that send Produce
 * requests are not read — a Produce frame already received waits before
 * dispatch — and they are read again within a few milliseconds of the total
 * falling below it.  Other connections (consumers, admin tools) go on.  A
 * single Produce request larger than the budget still passes when nothing
 * else is held.  budget 0: no limit.  usage must be thread-safe and quick.
 * Call before ks_server_start. */
void ks_server_set_produce_budget(ks_server_t *srv, int64_t budget, int64_t (*usage)(void *ctx), void *ctx);

/* Binds the listener and starts the I/O threads.  0, or -1 (logged). */
int ks_server_start(ks_server_t *srv);

/* The bound port (useful with port 0). */
int ks_server_port(const ks_server_t *srv);

/* Stops accepting, closes every connection, joins the I/O threads.  Requests
 * still held by handlers are released when they complete. */
void ks_server_stop(ks_server_t *srv);

/* Waits until every I/O loop has run what was posted to it before this
 * call (call from a non-loop thread).  Used at shutdown so that completions
 * posted by other threads are delivered before the state they touch goes. */
void ks_server_barrier(ks_server_t *srv);
void ks_server_destroy(ks_server_t *srv);

/* Runs fn(arg) when the request is freed, after its response has been
 * written (releases what the response references, e.g. cached record
 * data).  Call before completing the request.  0, or -1 if memory ran out
 * (fn is then called at once). */
int ks_req_add_cleanup(ks_req_t *req, void (*fn)(void *), void *arg);

/* --- request completion (thread-safe; exactly one per request) ----------- */

/* Encodes `resp` (a response struct of req->api, borrowed for the call) at
 * the request's version and queues it for the client. */
void ks_req_respond(ks_req_t *req, const void *resp);

/* Same, encoding at `version` instead of the request's (ApiVersions answers
 * an unsupported version with a v0 response, KIP-511). */
void ks_req_respond_version(ks_req_t *req, int16_t version, const void *resp);

/* Completes without a response (Produce with acks=0). */
void ks_req_respond_none(ks_req_t *req);

/* Completes by closing the connection after the responses before it have
 * been written (malformed or unsupported request).  `reason` is logged. */
void ks_req_close(ks_req_t *req, const char *reason);

#endif
