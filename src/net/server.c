/*
 * server.c — listener, connections, request framing, ordered responses.
 *
 * Ownership and threads:
 *  - ks_server_t is created and stopped by the main thread; its loops each
 *    run on their own I/O thread.
 *  - A ks_conn_t belongs to the loop that accepted it; only that thread reads
 *    or writes its fields.
 *  - A ks_req_t is owned by its handler between dispatch and completion.
 *    Completion may happen on any thread: the response is encoded there and
 *    the request is handed back to the connection's loop with ks_loop_post().
 *    A connection is freed only when it is closed AND none of its requests
 *    is still held by a handler (`outstanding` == 0).
 */
#include "net/server.h"

#include "net/listen.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "metrics/metrics.h"
#include "protocol/gen/kafka_msgs.h"
#include "util/log.h"

enum { REQ_HANDLING = 0, REQ_DONE = 1, REQ_DONE_CLOSE = 2, REQ_DONE_SILENT = 3 };

#define STAGE_BYTES (64 * 1024)     /* read buffer for small frames */
#define MAX_PENDING_OUT (16u << 20) /* stop reading while this much output waits */
#define MIN_FRAME_BYTES 8           /* api key + version + correlation id */
#define ACCEPT_PAUSE_MS 100         /* pause after accept() fails for lack of resources */
#define BUDGET_RECHECK_MS 5         /* connections paused for the produce budget look again */
#define PRODUCE_INFLIGHT_MAX 1024   /* Produce requests in flight per connection */

struct ks_conn {
        ks_server_t *srv;
        ks_loop_t *loop;
        ks_io_t io;
        int fd;
        char peer[64];

        uint8_t *rbuf; /* accumulating input; may hold several frames */
        size_t rlen, rcap;

        ks_req_t *head, *tail; /* every request not yet fully written, in order */
        int inflight;          /* requests in the list */
        int produce_inflight;  /* of which Produce requests */
        bool held;             /* a complete frame waits for room in flight */
        int outstanding;       /* requests held by handlers */
        size_t pending_out;    /* bytes of encoded responses not yet written */

        int64_t last_active_ms;
        bool closed;
        bool processing; /* inside conn_process_input (no re-entry) */
        bool free_scheduled;
        bool reading;          /* EPOLLIN enabled */
        bool want_write;       /* EPOLLOUT enabled */
        bool producer;         /* has sent a Produce request: subject to the budget */
        bool budget_paused;    /* not read because the produce budget is reached */

        ks_conn_t *prev_conn, *next_conn; /* loop's connection list */
};

typedef struct io_thread {
        ks_server_t *srv;
        ks_loop_t *loop;
        pthread_t thread;
        ks_io_t listen_io;
        ks_timer_t sweep_timer;
        ks_timer_t accept_timer; /* resumes accepting after EMFILE */
        ks_timer_t budget_timer; /* re-checks connections paused for the produce budget */
        int budget_paused;       /* connections of this loop with budget_paused */
        ks_conn_t *conns;
        int index;
} io_thread_t;

struct ks_server {
        const ks_config_t *cfg;
        ks_dispatch_fn *dispatch;
        void *ctx;
        ks_req_done_fn *on_complete; /* may be NULL */
        void *on_complete_ctx;
        int listen_fd;
        int port;
        io_thread_t *threads;
        int nthreads;
        int nconns; /* atomic */
        bool started;
        /* The produce budget (ks_server_set_produce_budget). */
        int64_t produce_budget;
        int64_t (*produce_usage)(void *ctx);
        void *produce_usage_ctx;
        int64_t produce_held; /* atomic: bytes of Produce frames held */
};

static void conn_close(ks_conn_t *c, const char *reason);
static void conn_budget_unpause(ks_conn_t *c);
static void conn_flush(ks_conn_t *c);
static void conn_update_events(ks_conn_t *c);

/* ------------------------------------------------------------------------ */
/* Requests                                                                  */

typedef struct ks_req_cleanup {
        struct ks_req_cleanup *next;
        void (*fn)(void *);
        void *arg;
} ks_req_cleanup_t;

int ks_req_add_cleanup(ks_req_t *req, void (*fn)(void *), void *arg)
{
        ks_req_cleanup_t *c = ks_arena_alloc(&req->arena, sizeof(*c));
        if (!c) {
                fn(arg);
                return -1;
        }
        c->fn = fn;
        c->arg = arg;
        c->next = req->cleanups;
        req->cleanups = c;
        return 0;
}

static void produce_held_add(ks_server_t *srv, int64_t delta)
{
        __atomic_add_fetch(&srv->produce_held, delta, __ATOMIC_RELAXED);
        ks_metric_add(ks_std_metrics.produce_buffer_bytes, 0, delta);
}

/* Is the produce buffer at its budget? */
static bool budget_reached(ks_server_t *srv)
{
        if (srv->produce_budget <= 0)
                return false;
        int64_t used = __atomic_load_n(&srv->produce_held, __ATOMIC_RELAXED);
        if (srv->produce_usage)
                used += srv->produce_usage(srv->produce_usage_ctx);
        return used >= srv->produce_budget;
}

static void req_free(ks_req_t *req)
{
        if (req->produce_held)
                produce_held_add(req->conn->srv, -(int64_t)req->produce_held);
        for (ks_req_cleanup_t *c = req->cleanups; c; c = c->next)
                c->fn(c->arg);
        ks_wbuf_destroy(&req->out);
        ks_arena_destroy(&req->arena);
        free(req->frame);
        free(req);
}

/* `req` leaves the connection's in-flight list: room for a held frame. */
static void conn_req_gone(ks_conn_t *c, const ks_req_t *req)
{
        c->inflight--;
        if (req->produce_held)
                c->produce_inflight--;
        c->held = false;
}

static void conn_unlink_req(ks_conn_t *c, ks_req_t *req)
{
        ks_req_t **pp = &c->head, *prev = NULL;
        while (*pp && *pp != req) {
                prev = *pp;
                pp = &(*pp)->next;
        }
        if (!*pp)
                return;
        *pp = req->next;
        if (c->tail == req)
                c->tail = prev;
        conn_req_gone(c, req);
}

/* Runs on the connection's loop: the handler is done with `req`. */
static void req_completed_on_loop(ks_loop_t *loop, void *arg)
{
        (void)loop;
        ks_req_t *req = arg;
        ks_conn_t *c = req->conn;
        if (c->srv->on_complete) {
                int st = req->state;
                int outcome = st == REQ_DONE_CLOSE    ? KS_REQ_OUTCOME_CLOSED
                              : st == REQ_DONE_SILENT ? KS_REQ_OUTCOME_NO_RESPONSE
                                                      : KS_REQ_OUTCOME_RESPONDED;
                c->srv->on_complete(c->srv->on_complete_ctx, req, outcome);
        }
        req->returned = true;
        c->outstanding--;
        if (c->closed) {
                /* The connection went away meanwhile; it was waiting for us. */
                conn_unlink_req(c, req);
                req_free(req);
                if (c->outstanding == 0)
                        conn_close(c, NULL);
                return;
        }
        c->pending_out += ks_wbuf_len(&req->out);
        conn_flush(c);
}

static void req_complete(ks_req_t *req, int state)
{
        ks_conn_t *c = req->conn;
        req->state = state; /* published to the loop by ks_loop_post() */
        if (ks_loop_on_thread(c->loop)) {
                req_completed_on_loop(c->loop, req);
        } else if (ks_loop_post(c->loop, req_completed_on_loop, req) != 0) {
                /* Cannot happen short of OOM; the loop would never learn about
                 * the request, so fail loudly rather than hang the client. */
                ks_log_error("request_completion_lost", "correlation_id=%d", req->hdr.CorrelationId);
                abort();
        }
}

static void respond_version(ks_req_t *req, int16_t version, const void *resp)
{
        size_t start = ks_frame_begin_response(&req->out, req->hdr.RequestApiKey, version, req->hdr.CorrelationId);
        ks_err_t err = ks_response_encode(req->api, version, resp, &req->out);
        if (err) {
                /* An encoder failure is a bug in the handler's response, not
                 * the client's fault: log it and drop the connection. */
                ks_log_error("response_encode_failed", "api=%s version=%d err=%s", req->api->name, version,
                             ks_err_name(err));
                req_complete(req, REQ_DONE_CLOSE);
                return;
        }
        ks_frame_finish(&req->out, start);
        req_complete(req, REQ_DONE);
}

void ks_req_respond(ks_req_t *req, const void *resp)
{
        respond_version(req, req->hdr.RequestApiVersion, resp);
}

void ks_req_respond_version(ks_req_t *req, int16_t version, const void *resp)
{
        respond_version(req, version, resp);
}

void ks_req_respond_none(ks_req_t *req)
{
        req_complete(req, REQ_DONE_SILENT);
}

void ks_req_close(ks_req_t *req, const char *reason)
{
        ks_log_warn("request_rejected", "peer=%s api_key=%d api_version=%d correlation_id=%d reason=\"%s\"",
                    req->peer, req->hdr.RequestApiKey, req->hdr.RequestApiVersion, req->hdr.CorrelationId, reason);
        req_complete(req, REQ_DONE_CLOSE);
}

/* ------------------------------------------------------------------------ */
/* Connections                                                               */

static void conn_free_deferred(ks_loop_t *loop, void *arg)
{
        (void)loop;
        ks_conn_t *c = arg;
        free(c->rbuf);
        free(c);
}

/* Closes the socket now; frees the connection once no handler holds one of
 * its requests.  `reason` NULL: no log line. */
static void conn_close(ks_conn_t *c, const char *reason)
{
        io_thread_t *t = &c->srv->threads[ks_loop_index(c->loop)];
        if (!c->closed) {
                if (reason)
                        ks_log_info("connection_closed", "peer=%s reason=\"%s\"", c->peer, reason);
                c->closed = true;
                conn_budget_unpause(c);
                ks_loop_io_del(c->loop, &c->io);
                close(c->fd);
                c->fd = -1;
                __atomic_sub_fetch(&c->srv->nconns, 1, __ATOMIC_SEQ_CST);
                ks_metric_add(ks_std_metrics.conns_open, 0, -1);
                ks_metric_inc(ks_std_metrics.conns_closed, 0);
                /* Free what came back; requests still held by handlers stay
                 * listed and are freed by req_completed_on_loop(). */
                ks_req_t *r = c->head;
                while (r) {
                        ks_req_t *next = r->next;
                        if (r->returned) {
                                conn_unlink_req(c, r);
                                req_free(r);
                        }
                        r = next;
                }
                if (c->prev_conn)
                        c->prev_conn->next_conn = c->next_conn;
                else
                        t->conns = c->next_conn;
                if (c->next_conn)
                        c->next_conn->prev_conn = c->prev_conn;
        }
        if (c->outstanding == 0 && !c->free_scheduled) {
                c->free_scheduled = true;
                ks_loop_defer(c->loop, conn_free_deferred, c);
        }
}

/* May the connection take another request?  Bounded by the requests it
 * has in flight (answered or not, until written: max_inflight_per_conn of
 * other kinds, PRODUCE_INFLIGHT_MAX Produce requests — those wait for
 * their flush side by side and the produce budget bounds their memory; a
 * frame that finds no room is `held`) and the bytes of answers waiting to
 * be written: a client that does not read cannot grow memory. */
static bool conn_can_accept(const ks_conn_t *c)
{
        return !c->held && c->pending_out < MAX_PENDING_OUT && !(c->producer && budget_reached(c->srv));
}

/* Room in flight for a frame of this kind? */
static bool conn_has_room(const ks_conn_t *c, bool produce)
{
        if (produce)
                return c->produce_inflight < PRODUCE_INFLIGHT_MAX;
        return c->inflight - c->produce_inflight < c->srv->cfg->max_inflight_per_conn;
}

static io_thread_t *conn_thread(const ks_conn_t *c)
{
        return &c->srv->threads[ks_loop_index(c->loop)];
}

/* A producer connection stops being read until the produce buffer is below
 * its budget again (budget_recheck_cb looks every BUDGET_RECHECK_MS). */
static void conn_budget_pause(ks_conn_t *c)
{
        if (c->budget_paused)
                return;
        io_thread_t *t = conn_thread(c);
        c->budget_paused = true;
        if (t->budget_paused++ == 0 && !ks_timer_armed(&t->budget_timer))
                ks_timer_arm(c->loop, &t->budget_timer, ks_loop_now_ms() + BUDGET_RECHECK_MS);
        ks_metric_add(ks_std_metrics.produce_paused_conns, 0, 1);
        ks_metric_inc(ks_std_metrics.produce_pauses, 0);
        ks_log_debug("connection_paused", "peer=%s reason=produce_buffer_budget", c->peer);
}

static void conn_budget_unpause(ks_conn_t *c)
{
        if (!c->budget_paused)
                return;
        c->budget_paused = false;
        conn_thread(c)->budget_paused--;
        ks_metric_add(ks_std_metrics.produce_paused_conns, 0, -1);
}

static int conn_process_input(ks_conn_t *c);

static void conn_update_events(ks_conn_t *c)
{
        while (!c->closed) {
                bool can_read = conn_can_accept(c);
                /* While paused, do not ask for EPOLLRDHUP either: level-triggered,
                 * it would wake the loop forever for a peer that closed; the close
                 * is noticed when its answers are written or reading resumes. */
                uint32_t ev = (can_read ? EPOLLIN | EPOLLRDHUP : 0) | (c->want_write ? EPOLLOUT : 0);
                c->reading = can_read;
                if (can_read)
                        conn_budget_unpause(c);
                else if (c->producer && budget_reached(c->srv))
                        conn_budget_pause(c);
                ks_loop_io_mod(c->loop, &c->io, ev);
                /* Frames already buffered wait for no new bytes: take them now,
                 * whenever there is room (not only when reading resumes: the cap
                 * may have stopped the previous pass half way through the buffer,
                 * and a client waiting for answers sends nothing more).  Look
                 * again after each pass; stop when a pass makes no progress (an
                 * incomplete frame waits for its bytes). */
                if (!can_read || c->processing || c->rlen < 4)
                        return;
                size_t before = c->rlen;
                if (conn_process_input(c) < 0 || c->rlen >= before)
                        return;
        }
}

static void conn_pop_head(ks_conn_t *c)
{
        ks_req_t *r = c->head;
        c->head = r->next;
        if (!c->head)
                c->tail = NULL;
        conn_req_gone(c, r);
        req_free(r);
}

/* Writes the completed responses at the head of the queue, in order. */
static void conn_flush(ks_conn_t *c)
{
        while (!c->closed && c->head) {
                struct iovec iov[64];
                int niov = 0;
                ks_req_t *r = c->head;
                /* Gather consecutive completed responses. */
                for (; r && niov < 64; r = r->next) {
                        if (!r->returned)
                                break;
                        int st = r->state;
                        if (st == REQ_DONE_CLOSE) {
                                if (niov == 0) {
                                        conn_close(c, "request rejected");
                                        return;
                                }
                                break;
                        }
                        if (st == REQ_DONE_SILENT)
                                continue;
                        struct iovec *v;
                        int n;
                        if (ks_wbuf_iov(&r->out, &v, &n) != 0) {
                                conn_close(c, "out of memory");
                                return;
                        }
                        for (int i = 0; i < n && niov < 64; i++)
                                iov[niov++] = v[i];
                        if (niov == 64)
                                break;
                }
                if (niov == 0) {
                        /* Only silent completions at the head: drop them. */
                        bool popped = false;
                        while (c->head &&
                               c->head->returned && c->head->state == REQ_DONE_SILENT) {
                                conn_pop_head(c);
                                popped = true;
                        }
                        if (!popped)
                                break;
                        continue;
                }
                ssize_t n = writev(c->fd, iov, niov);
                if (n < 0) {
                        if (errno == EAGAIN || errno == EWOULDBLOCK) {
                                c->want_write = true;
                                conn_update_events(c);
                                return;
                        }
                        if (errno == EINTR)
                                continue;
                        conn_close(c, strerror(errno));
                        return;
                }
                c->last_active_ms = ks_loop_now_ms();
                ks_metric_add(ks_std_metrics.net_tx_bytes, 0, (int64_t)n);
                size_t left = (size_t)n;
                c->pending_out -= left < c->pending_out ? left : c->pending_out;
                while (c->head) {
                        ks_req_t *h = c->head;
                        int st = h->returned ? h->state : REQ_HANDLING;
                        if (st == REQ_DONE_SILENT) {
                                conn_pop_head(c);
                                continue;
                        }
                        if (st != REQ_DONE)
                                break;
                        size_t len = ks_wbuf_len(&h->out);
                        if (left >= len) {
                                left -= len;
                                conn_pop_head(c);
                        } else {
                                ks_wbuf_consume(&h->out, left);
                                left = 0;
                                break;
                        }
                }
        }
        if (!c->closed) {
                bool need_write = false;
                if (c->head && c->head->returned && c->head->state == REQ_DONE &&
                    ks_wbuf_len(&c->head->out) > 0)
                        need_write = true;
                c->want_write = need_write;
                conn_update_events(c);
        }
}

static void conn_start_request(ks_conn_t *c, uint8_t *frame, size_t frame_len)
{
        const uint8_t *body = frame + 4;
        size_t len = frame_len - 4;
        ks_req_header_t hdr;
        size_t body_off;
        if (ks_req_header_parse(body, len, &hdr, &body_off) != 0) {
                free(frame);
                ks_metric_inc(ks_std_metrics.frame_errors, 0);
                conn_close(c, "malformed request header");
                return;
        }
        ks_req_t *req = calloc(1, sizeof(*req));
        if (!req) {
                free(frame);
                conn_close(c, "out of memory");
                return;
        }
        req->hdr = hdr;
        req->api = ks_api_desc(hdr.RequestApiKey);
        req->frame = frame;
        if (hdr.RequestApiKey == KS_API_PRODUCE) {
                req->produce_held = frame_len;
                produce_held_add(c->srv, (int64_t)frame_len);
                c->produce_inflight++;
        }
        req->body = body + body_off;
        req->body_len = len - body_off;
        req->conn = c;
        req->received_ms = ks_loop_now_ms();
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        req->received_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
        memcpy(req->peer, c->peer, sizeof(req->peer));
        ks_arena_init(&req->arena, 4096);
        ks_wbuf_init(&req->out);
        req->state = REQ_HANDLING;
        if (c->tail)
                c->tail->next = req;
        else
                c->head = req;
        c->tail = req;
        c->inflight++;
        c->outstanding++;
        ks_log_debug("request", "peer=%s api_key=%d api_version=%d correlation_id=%d client_id=\"%.*s\" bytes=%zu",
                     c->peer, hdr.RequestApiKey, hdr.RequestApiVersion, hdr.CorrelationId,
                     hdr.ClientId.len > 0 ? (int)hdr.ClientId.len : 0, hdr.ClientId.ptr ? hdr.ClientId.ptr : "",
                     frame_len);
        c->srv->dispatch(c->srv->ctx, req);
}

/* Extracts every complete frame from rbuf.  Returns -1 if the connection was
 * closed. */
static int conn_process_frames(ks_conn_t *c)
{
        size_t off = 0;
        while (!c->closed && c->rlen - off >= 4 && conn_can_accept(c)) {
                const uint8_t *p = c->rbuf + off;
                int32_t size = (int32_t)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]);
                if (size < MIN_FRAME_BYTES || (int64_t)size > c->srv->cfg->max_request_bytes) {
                        char why[96];
                        snprintf(why, sizeof(why), "invalid frame size %d (limit %lld)", size,
                                 (long long)c->srv->cfg->max_request_bytes);
                        ks_metric_inc(ks_std_metrics.frame_errors, 0);
                        conn_close(c, why);
                        return -1;
                }
                size_t total = 4 + (size_t)size;
                if (c->rlen - off < total) {
                        /* Make room for the rest of this frame, growing with
                         * what the client actually sent (never trusting the
                         * size prefix for a big allocation up front). */
                        if (off > 0) {
                                memmove(c->rbuf, c->rbuf + off, c->rlen - off);
                                c->rlen -= off;
                                off = 0;
                        }
                        if (c->rcap < total && c->rlen == c->rcap) {
                                size_t ncap = c->rcap * 2;
                                if (ncap > total)
                                        ncap = total;
                                uint8_t *nb = realloc(c->rbuf, ncap);
                                if (!nb) {
                                        conn_close(c, "out of memory");
                                        return -1;
                                }
                                c->rbuf = nb;
                                c->rcap = ncap;
                        }
                        return 0;
                }
                bool produce = total >= 6 && p[4] == 0 && p[5] == KS_API_PRODUCE;
                if (produce) {
                        /* From now on the produce budget applies to this
                         * connection; at the budget the frame waits here. */
                        c->producer = true;
                        if (!conn_can_accept(c))
                                break;
                }
                if (!conn_has_room(c, produce)) {
                        c->held = true; /* until a request in flight is written */
                        break;
                }
                uint8_t *frame;
                if (off == 0 && c->rlen == total && total > STAGE_BYTES / 4) {
                        /* The buffer holds exactly this frame: hand it over. */
                        frame = c->rbuf;
                        c->rbuf = NULL;
                        c->rlen = c->rcap = 0;
                } else {
                        frame = malloc(total);
                        if (!frame) {
                                conn_close(c, "out of memory");
                                return -1;
                        }
                        memcpy(frame, p, total);
                }
                off += total;
                conn_start_request(c, frame, total);
                if (!c->rbuf)
                        return c->closed ? -1 : 0;
        }
        if (c->closed)
                return -1;
        if (off > 0) {
                memmove(c->rbuf, c->rbuf + off, c->rlen - off);
                c->rlen -= off;
        }
        return 0;
}

/* Dispatches the complete frames in the read buffer while the connection
 * may take requests.  -1 if the connection was closed. */
static int conn_process_input(ks_conn_t *c)
{
        c->processing = true;
        int rc = conn_process_frames(c);
        c->processing = false;
        return rc;
}

static void conn_on_readable(ks_conn_t *c)
{
        while (!c->closed && c->reading) {
                if (!c->rbuf) {
                        c->rbuf = malloc(STAGE_BYTES);
                        if (!c->rbuf) {
                                conn_close(c, "out of memory");
                                return;
                        }
                        c->rcap = STAGE_BYTES;
                        c->rlen = 0;
                }
                if (c->rlen == c->rcap) {
                        /* Full buffer with no complete frame: only possible for
                         * a frame larger than rcap; conn_process_input grows it. */
                        if (conn_process_input(c) < 0)
                                return;
                        if (c->rbuf && c->rlen == c->rcap)
                                return; /* cannot grow further (should not happen) */
                        continue;
                }
                ssize_t n = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
                if (n == 0) {
                        conn_close(c, NULL);
                        return;
                }
                if (n < 0) {
                        if (errno == EAGAIN || errno == EWOULDBLOCK)
                                return;
                        if (errno == EINTR)
                                continue;
                        conn_close(c, strerror(errno));
                        return;
                }
                c->rlen += (size_t)n;
                c->last_active_ms = ks_loop_now_ms();
                ks_metric_add(ks_std_metrics.net_rx_bytes, 0, (int64_t)n);
                if (conn_process_input(c) < 0)
                        return;
                conn_update_events(c);
        }
}

static void conn_io_cb(ks_loop_t *loop, void *opaque, uint32_t events)
{
        (void)loop;
        ks_conn_t *c = opaque;
        if (c->closed)
                return;
        if (events & (EPOLLERR | EPOLLHUP)) {
                conn_close(c, NULL);
                return;
        }
        if (events & EPOLLOUT)
                conn_flush(c);
        if (!c->closed && (events & (EPOLLIN | EPOLLRDHUP)))
                conn_on_readable(c);
}

/* ------------------------------------------------------------------------ */
/* Accepting and sweeping                                                    */

static void format_peer(const struct sockaddr_storage *ss, char *out, size_t len)
{
        char host[INET6_ADDRSTRLEN] = "?";
        int port = 0;
        if (ss->ss_family == AF_INET) {
                const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
                inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
                port = ntohs(a->sin_port);
        } else if (ss->ss_family == AF_INET6) {
                const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
                inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
                port = ntohs(a->sin6_port);
        }
        snprintf(out, len, "%s:%d", host, port);
}

static void listen_cb(ks_loop_t *loop, void *opaque, uint32_t events)
{
        (void)events;
        io_thread_t *t = opaque;
        ks_server_t *srv = t->srv;
        for (;;) {
                struct sockaddr_storage ss;
                socklen_t sl = sizeof(ss);
                int fd = accept4(srv->listen_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0) {
                        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                                return;
                        if (errno == ECONNABORTED)
                                continue;
                        /* Out of descriptors (or memory): stop accepting on
                         * this loop for a moment instead of spinning on a
                         * listener that stays readable; one line per pause. */
                        ks_log_warn("accept_failed", "errno=%d err=\"%s\" action=\"pause accepting for %d ms\"%s",
                                    errno, strerror(errno), ACCEPT_PAUSE_MS,
                                    errno == EMFILE ? " fix=\"raise the open-files limit (ulimit -n) or lower "
                                                      "KAFSCALE_MAX_CONNECTIONS\""
                                                    : "");
                        ks_loop_io_del(loop, &t->listen_io);
                        ks_timer_arm(loop, &t->accept_timer, ks_loop_now_ms() + ACCEPT_PAUSE_MS);
                        return;
                }
                char peer[64];
                format_peer(&ss, peer, sizeof(peer));
                if (__atomic_add_fetch(&srv->nconns, 1, __ATOMIC_SEQ_CST) > srv->cfg->max_connections) {
                        __atomic_sub_fetch(&srv->nconns, 1, __ATOMIC_SEQ_CST);
                        ks_metric_inc(ks_std_metrics.conns_refused, 0);
                        ks_log_warn("connection_refused", "peer=%s reason=\"KAFSCALE_MAX_CONNECTIONS=%d reached\"",
                                    peer, srv->cfg->max_connections);
                        close(fd);
                        continue;
                }
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                ks_conn_t *c = calloc(1, sizeof(*c));
                if (!c) {
                        __atomic_sub_fetch(&srv->nconns, 1, __ATOMIC_SEQ_CST);
                        close(fd);
                        continue;
                }
                c->srv = srv;
                c->loop = loop;
                c->fd = fd;
                memcpy(c->peer, peer, sizeof(c->peer));
                c->last_active_ms = ks_loop_now_ms();
                c->reading = true;
                if (ks_loop_io_add(loop, &c->io, fd, EPOLLIN | EPOLLRDHUP, conn_io_cb, c) != 0) {
                        __atomic_sub_fetch(&srv->nconns, 1, __ATOMIC_SEQ_CST);
                        close(fd);
                        free(c);
                        continue;
                }
                c->next_conn = t->conns;
                if (t->conns)
                        t->conns->prev_conn = c;
                t->conns = c;
                ks_metric_inc(ks_std_metrics.conns_open, 0);
                ks_metric_inc(ks_std_metrics.conns_accepted, 0);
                ks_log_debug("connection_accepted", "peer=%s loop=%d", peer, t->index);
        }
}

static void sweep_cb(ks_loop_t *loop, ks_timer_t *timer)
{
        io_thread_t *t = timer->opaque;
        int64_t now = ks_loop_now_ms();
        int64_t idle = t->srv->cfg->idle_timeout_ms;
        ks_conn_t *c = t->conns;
        while (c) {
                ks_conn_t *next = c->next_conn;
                if (c->inflight == 0 && now - c->last_active_ms >= idle)
                        conn_close(c, "idle timeout");
                c = next;
        }
        int64_t period = idle / 4 < 1000 ? (idle / 4 > 25 ? idle / 4 : 25) : 1000;
        ks_timer_arm(loop, timer, now + period);
}

static void budget_recheck_cb(ks_loop_t *loop, ks_timer_t *timer)
{
        io_thread_t *t = timer->opaque;
        if (t->budget_paused == 0)
                return;
        if (!budget_reached(t->srv)) {
                ks_conn_t *c = t->conns;
                while (c) {
                        ks_conn_t *next = c->next_conn;
                        if (c->budget_paused) {
                                conn_budget_unpause(c);
                                conn_update_events(c); /* may pause it again, or close it */
                        }
                        c = next;
                }
        }
        if (t->budget_paused > 0)
                ks_timer_arm(loop, timer, ks_loop_now_ms() + BUDGET_RECHECK_MS);
}

static void accept_resume_cb(ks_loop_t *loop, ks_timer_t *timer)
{
        io_thread_t *t = timer->opaque;
        if (ks_loop_io_add(loop, &t->listen_io, t->srv->listen_fd, EPOLLIN | EPOLLEXCLUSIVE, listen_cb, t) != 0)
                ks_timer_arm(loop, timer, ks_loop_now_ms() + ACCEPT_PAUSE_MS);
}

static void *io_thread_main(void *arg)
{
        io_thread_t *t = arg;
        ks_timer_init(&t->accept_timer, accept_resume_cb, t);
        ks_timer_init(&t->sweep_timer, sweep_cb, t);
        ks_timer_init(&t->budget_timer, budget_recheck_cb, t);
        ks_timer_arm(t->loop, &t->sweep_timer, ks_loop_now_ms() + 25);
        ks_loop_run(t->loop);
        return NULL;
}

/* Runs on each loop at shutdown: stop accepting, close every connection
 * owned by this loop, and leave the loop. */
static void io_thread_shutdown(ks_loop_t *loop, void *arg)
{
        io_thread_t *t = arg;
        ks_loop_io_del(loop, &t->listen_io);
        ks_timer_cancel(loop, &t->sweep_timer);
        ks_timer_cancel(loop, &t->accept_timer);
        ks_timer_cancel(loop, &t->budget_timer);
        while (t->conns)
                conn_close(t->conns, NULL);
        ks_loop_stop(loop);
}

/* ------------------------------------------------------------------------ */
/* Server                                                                    */

ks_server_t *ks_server_new(const ks_config_t *cfg, ks_dispatch_fn *dispatch, void *ctx)
{
        ks_server_t *srv = calloc(1, sizeof(*srv));
        if (!srv)
                return NULL;
        srv->cfg = cfg;
        srv->dispatch = dispatch;
        srv->ctx = ctx;
        srv->listen_fd = -1;
        return srv;
}

static int bind_listener(ks_server_t *srv)
{
        const ks_config_t *cfg = srv->cfg;
        srv->listen_fd = ks_listen_tcp(cfg->listen_host, cfg->listen_port, 1024, "listen_failed",
                                       "KAFSCALE_BROKER_ADDR", &srv->port, NULL);
        return srv->listen_fd >= 0 ? 0 : -1;
}

void ks_server_set_produce_budget(ks_server_t *srv, int64_t budget, int64_t (*usage)(void *ctx), void *ctx)
{
        srv->produce_budget = budget;
        srv->produce_usage = usage;
        srv->produce_usage_ctx = ctx;
        ks_metric_set(ks_std_metrics.produce_buffer_budget, 0, budget);
}

void ks_server_set_on_complete(ks_server_t *srv, ks_req_done_fn *fn, void *ctx)
{
        srv->on_complete = fn;
        srv->on_complete_ctx = ctx;
}

int ks_server_start(ks_server_t *srv)
{
        if (bind_listener(srv) != 0)
                return -1;
        srv->nthreads = srv->cfg->io_threads;
        srv->threads = calloc((size_t)srv->nthreads, sizeof(io_thread_t));
        if (!srv->threads)
                return -1;
        for (int i = 0; i < srv->nthreads; i++) {
                io_thread_t *t = &srv->threads[i];
                t->srv = srv;
                t->index = i;
                t->loop = ks_loop_new(i);
                if (!t->loop)
                        return -1;
                /* Every loop listens; EPOLLEXCLUSIVE wakes one of them per
                 * incoming connection, spreading connections over threads. */
                if (ks_loop_io_add(t->loop, &t->listen_io, srv->listen_fd, EPOLLIN | EPOLLEXCLUSIVE, listen_cb, t) !=
                    0)
                        return -1;
        }
        for (int i = 0; i < srv->nthreads; i++) {
                io_thread_t *t = &srv->threads[i];
                if (pthread_create(&t->thread, NULL, io_thread_main, t) != 0) {
                        ks_log_error("thread_create_failed", "what=io_thread index=%d", i);
                        return -1;
                }
                char name[16];
                snprintf(name, sizeof(name), "ks-io-%u", (unsigned)(uint16_t)i);
                pthread_setname_np(t->thread, name);
        }
        srv->started = true;
        return 0;
}

int ks_server_port(const ks_server_t *srv)
{
        return srv->port;
}

typedef struct barrier {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        int left;
} barrier_t;

static void barrier_arrive(ks_loop_t *loop, void *arg)
{
        (void)loop;
        barrier_t *b = arg;
        pthread_mutex_lock(&b->lock);
        if (--b->left == 0)
                pthread_cond_signal(&b->cond);
        pthread_mutex_unlock(&b->lock);
}

void ks_server_barrier(ks_server_t *srv)
{
        if (!srv->started)
                return;
        barrier_t b;
        pthread_mutex_init(&b.lock, NULL);
        pthread_cond_init(&b.cond, NULL);
        b.left = srv->nthreads;
        for (int i = 0; i < srv->nthreads; i++)
                if (ks_loop_post(srv->threads[i].loop, barrier_arrive, &b) != 0)
                        barrier_arrive(NULL, &b);
        pthread_mutex_lock(&b.lock);
        while (b.left > 0)
                pthread_cond_wait(&b.cond, &b.lock);
        pthread_mutex_unlock(&b.lock);
        pthread_cond_destroy(&b.cond);
        pthread_mutex_destroy(&b.lock);
}

void ks_server_stop(ks_server_t *srv)
{
        if (!srv->started)
                return;
        for (int i = 0; i < srv->nthreads; i++)
                if (ks_loop_post(srv->threads[i].loop, io_thread_shutdown, &srv->threads[i]) != 0)
                        ks_loop_stop(srv->threads[i].loop);
        for (int i = 0; i < srv->nthreads; i++)
                pthread_join(srv->threads[i].thread, NULL);
        srv->started = false;
}

void ks_server_destroy(ks_server_t *srv)
{
        if (!srv)
                return;
        ks_server_stop(srv);
        for (int i = 0; i < srv->nthreads; i++)
                ks_loop_destroy(srv->threads[i].loop);
        free(srv->threads);
        if (srv->listen_fd >= 0)
                close(srv->listen_fd);
        free(srv);
}
