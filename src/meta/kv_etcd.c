/*
 * kv_etcd.c — the cluster metadata store: kv.h over an etcd v3 cluster,
 * through etcd's JSON gateway (HTTP/1.1 POST /v3/..., JSON bodies, keys and
 * values base64, int64 as JSON strings, default-valued fields omitted).
 *
 * etcd itself provides every kv.h semantic (revisions, txn compares, leases,
 * watch history); this file translates, and checks arguments exactly as the
 * in-process engine (kv.c) does so that every backend answers the same input
 * the same way.  On top of that it refuses requests etcd would refuse for
 * their size in bytes (KS_ERR__TOO_LARGE, see kv.h) without sending them.
 *
 * Requests and failover: a call tries the endpoints in turn, starting with
 * cur_ep: the one that answered last, moved on when one fails (even if the
 * call could not go on to the next).  The next endpoint is tried after a
 * connection failure, a timeout, or an "unavailable" answer (HTTP 5xx, gRPC
 * Unavailable/DeadlineExceeded, "no leader", "leader changed"...) — but a
 * write (put, delete, txn with writes) is sent again only when it certainly
 * was not applied: nothing was sent (connect failed), or etcd said it
 * rejected it before proposing it ("no leader", "raft proposal dropped",
 * "too many requests", ...).  A write whose outcome is unknown (timeout,
 * connection lost after sending, "request timed out") fails with
 * KS_ERR__TIMEOUT / KS_ERR__UNAVAILABLE and is not retried.  Lease grants are
 * retried (a duplicate lease just expires), revokes too (a retry that finds
 * the lease gone reports success).  Every request carries the gRPC metadata
 * "hasleader", so a member cut off from the leader answers at once instead of
 * timing out.  Timeouts are per HTTP exchange (request_timeout_ms, and
 * connect_timeout_ms for the TCP connect).
 *
 * Authentication: with a username, open() authenticates (/v3/auth/
 * authenticate) and every request carries "Authorization: <token>".  A
 * request answered "invalid auth token" (tokens die with an etcd restart, or
 * expire) re-authenticates once and is sent again (it was refused before
 * being applied).  auth_mu serialises re-authentication; token_gen tells a
 * caller whether someone else already renewed the token.
 *
 * Connections: a pool of idle CURL easy handles (each keeps its keep-alive
 * connections); a call takes one (or creates one), and gives it back.  No
 * limit on concurrent calls; at most ETCD_POOL_IDLE handles are kept.
 *
 * Watches: one thread per watch ("ks-etcd-watch") holding a streaming POST
 * /v3/watch on its own easy handle inside its own multi handle, so that
 * watch_cancel can wake it at once (curl_multi_wakeup).  Stream lines
 * ({"result":{...}}\n, split anyhow across reads) are decoded and their
 * events delivered one callback call per revision, in order, from the watch
 * thread (inside curl's write callback; no lock is held).  As with kv.c's
 * single dispatcher, callbacks of all the store's watches run one at a time
 * (cb_busy): a callback never sees another watch's callback half-way; a
 * watch cancelled while waiting for its turn just stops.  The thread keeps
 * next_rev, the first revision not yet delivered (advanced by events and by
 * progress notifications).  When the stream ends or breaks, the thread
 * reconnects (next endpoint, backoff 50 ms doubling to 1 s, reset by a
 * stream that got established) with start_revision = next_rev: no gap, no
 * duplicate.  When etcd cancels the watch because next_rev was compacted, the
 * thread reads the current revision R, delivers one KS_KV_EV_COMPACTED event
 * (revision = etcd's compact_revision) and continues from R + 1, as kv.c's
 * engine does; the watcher reloads by itself.  watch_cancel sets `cancelled`,
 * wakes the thread, and joins it: when it returns no callback runs or will
 * run.  A callback may call the store (other handles, no lock held).
 * A network partition without a TCP reset is noticed by TCP keep-alive on the
 * stream (ETCD_WATCH_KEEPIDLE_S) or, if the member loses its leader, by etcd
 * closing the stream ("hasleader").
 *
 * Threads and locks:
 *  - mu protects the pool, the token and token_gen, the watch list,
 *    `detached` and `cb_busy`; it is never held across network I/O or a
 *    callback.
 *  - auth_mu serialises re-authentication (held across its HTTP exchange;
 *    taken before mu, never the reverse).
 *  - cur_ep is read and written with __atomic builtins.
 *  - a watch's fields other than `cancelled`, `next` and `self_cancelled` are
 *    its thread's only (set before the thread starts).
 * Every function may run on any thread; calls block on the network.
 *
 * Ownership: the store owns its copies of the configuration; results follow
 * kv.h.  JSON answers are decoded by the functions of kv_etcd_json.h (also
 * fuzzed: tests/fuzz/fuzz_etcd_json.c); a malformed answer is KS_ERR__PARSE,
 * logged, or for a watch a reconnect from next_rev.
 */
#include "meta/kv_etcd_json.h"

#include <ctype.h>
#include <curl/curl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "meta/kv_engine.h"
#include "util/clock.h"
#include "util/log.h"

#define ETCD_DEFAULT_REQUEST_TIMEOUT_MS 5000
/* With several endpoints, a lease keepalive waits at most this long per
 * endpoint (capped by the request timeout) before the next one is tried:
 * during a leader election a keepalive parked on a member without a leader
 * must not use up a session whose TTL may be only a few seconds. */
#define ETCD_KEEPALIVE_TIMEOUT_MS 1000
#define ETCD_DEFAULT_CONNECT_TIMEOUT_MS 1000
#define ETCD_DEFAULT_PORT 2379
#define ETCD_MAX_ENDPOINTS 64
#define ETCD_POOL_IDLE 16
#define ETCD_JSON_DEPTH 32
#define ETCD_MAX_RESPONSE (256u * 1024 * 1024)  /* one unary answer */
#define ETCD_MAX_WATCH_LINE (64u * 1024 * 1024) /* one watch stream message */
#define ETCD_OP_OVERHEAD 32                     /* per key/value in the size estimate */
#define ETCD_REQ_OVERHEAD 64
#define ETCD_WATCH_BACKOFF_MIN_MS 50
#define ETCD_WATCH_BACKOFF_MAX_MS 1000
#define ETCD_WATCH_POLL_MS 1000
#define ETCD_WATCH_KEEPIDLE_S 10
#define ETCD_WATCH_KEEPINTVL_S 5
#define ETCD_WATCH_ERRBODY 2048

/* ================================================================ base64 */

static const char b64_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t ks_etcd_b64_encode(const void *in, size_t n, char *out)
{
        const uint8_t *p = in;
        size_t o = 0, i = 0;

        for (; i + 3 <= n; i += 3) {
                uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
                out[o++] = b64_alphabet[v >> 18];
                out[o++] = b64_alphabet[(v >> 12) & 63];
                out[o++] = b64_alphabet[(v >> 6) & 63];
                out[o++] = b64_alphabet[v & 63];
        }
        if (n - i == 1) {
                uint32_t v = (uint32_t)p[i] << 16;
                out[o++] = b64_alphabet[v >> 18];
                out[o++] = b64_alphabet[(v >> 12) & 63];
                out[o++] = '=';
                out[o++] = '=';
        } else if (n - i == 2) {
                uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
                out[o++] = b64_alphabet[v >> 18];
                out[o++] = b64_alphabet[(v >> 12) & 63];
                out[o++] = b64_alphabet[(v >> 6) & 63];
                out[o++] = '=';
        }
        out[o] = 0;
        return o;
}

static int b64_value(unsigned char c)
{
        if (c >= 'A' && c <= 'Z')
                return c - 'A';
        if (c >= 'a' && c <= 'z')
                return c - 'a' + 26;
        if (c >= '0' && c <= '9')
                return c - '0' + 52;
        if (c == '+' || c == '-')
                return 62;
        if (c == '/' || c == '_')
                return 63;
        return -1;
}

ks_err_t ks_etcd_b64_decode(const char *in, size_t n, uint8_t **out, size_t *outlen)
{
        *out = NULL;
        *outlen = 0;
        /* Padding: up to two '=' at the end, and only to a multiple of 4. */
        size_t pad = 0;
        while (n > 0 && in[n - 1] == '=' && pad < 2) {
                n--;
                pad++;
        }
        if (n % 4 == 1 || (pad && (n + pad) % 4 != 0))
                return KS_ERR__PARSE;
        uint8_t *d = malloc(n / 4 * 3 + 3);
        if (!d)
                return KS_ERR__NOMEM;
        size_t o = 0;
        uint32_t acc = 0;
        int bits = 0;
        for (size_t i = 0; i < n; i++) {
                int v = b64_value((unsigned char)in[i]);
                if (v < 0) {
                        free(d);
                        return KS_ERR__PARSE;
                }
                acc = (acc << 6) | (uint32_t)v;
                bits += 6;
                if (bits >= 8) {
                        bits -= 8;
                        d[o++] = (uint8_t)(acc >> bits);
                        acc &= (1u << bits) - 1;
                }
        }
        if (acc != 0) { /* non-canonical trailing bits */
                free(d);
                return KS_ERR__PARSE;
        }
        d[o] = 0;
        *out = d;
        *outlen = o;
        return KS_ERR_NONE;
}

/* ================================================================ JSON in */

/* Parses buf as exactly one JSON object (whitespace around allowed). */
static ks_err_t json_load(const char *buf, size_t len, json_object **out)
{
        json_tokener *tok;
        json_object *o;
        ks_err_t err = KS_ERR_NONE;

        *out = NULL;
        if (!buf || len == 0 || len > INT_MAX || memchr(buf, 0, len))
                return KS_ERR__PARSE;
        if (!(tok = json_tokener_new_ex(ETCD_JSON_DEPTH)))
                return KS_ERR__NOMEM;
        o = json_tokener_parse_ex(tok, buf, (int)len);
        if (!o || json_tokener_get_error(tok) != json_tokener_success || !json_object_is_type(o, json_type_object)) {
                err = KS_ERR__PARSE;
        } else {
                for (size_t i = json_tokener_get_parse_end(tok); i < len; i++)
                        if (!isspace((unsigned char)buf[i]))
                                err = KS_ERR__PARSE;
        }
        json_tokener_free(tok);
        if (err) {
                json_object_put(o);
                return err;
        }
        *out = o;
        return KS_ERR_NONE;
}

/* Member `name` of object o; NULL when absent or null. */
static json_object *jfield(json_object *o, const char *name)
{
        json_object *v = NULL;

        if (!json_object_object_get_ex(o, name, &v) || json_object_is_type(v, json_type_null))
                return NULL;
        return v;
}

static ks_err_t parse_i64(const char *s, size_t n, int64_t *out)
{
        bool neg = false;
        uint64_t v = 0;
        size_t i = 0;

        if (n > 0 && s[0] == '-') {
                neg = true;
                i = 1;
        }
        if (i == n || n - i > 19)
                return KS_ERR__PARSE;
        for (; i < n; i++) {
                if (s[i] < '0' || s[i] > '9')
                        return KS_ERR__PARSE;
                v = v * 10 + (uint64_t)(s[i] - '0');
        }
        if (neg ? v > (uint64_t)INT64_MAX + 1 : v > (uint64_t)INT64_MAX)
                return KS_ERR__PARSE;
        *out = neg ? (int64_t)(0 - v) : (int64_t)v;
        return KS_ERR_NONE;
}

/* int64 member: a JSON string of digits (how the gateway sends int64) or a
 * JSON integer; absent = 0. */
static ks_err_t j_i64(json_object *o, const char *name, int64_t *out)
{
        json_object *v = jfield(o, name);

        *out = 0;
        if (!v)
                return KS_ERR_NONE;
        if (json_object_is_type(v, json_type_int)) {
                *out = json_object_get_int64(v);
                return KS_ERR_NONE;
        }
        if (json_object_is_type(v, json_type_string))
                return parse_i64(json_object_get_string(v), (size_t)json_object_get_string_len(v), out);
        return KS_ERR__PARSE;
}

/* A non-negative int64 member (revisions, versions, counts). */
static ks_err_t j_u63(json_object *o, const char *name, int64_t *out)
{
        ks_err_t err = j_i64(o, name, out);
        return err ? err : *out < 0 ? KS_ERR__PARSE : KS_ERR_NONE;
}

static ks_err_t j_bool(json_object *o, const char *name, bool *out)
{
        json_object *v = jfield(o, name);

        *out = false;
        if (!v)
                return KS_ERR_NONE;
        if (!json_object_is_type(v, json_type_boolean))
                return KS_ERR__PARSE;
        *out = json_object_get_boolean(v);
        return KS_ERR_NONE;
}

/* String member (absent: ""); *s borrowed from o. */
static ks_err_t j_str(json_object *o, const char *name, const char **s, size_t *len)
{
        json_object *v = jfield(o, name);

        *s = "";
        *len = 0;
        if (!v)
                return KS_ERR_NONE;
        if (!json_object_is_type(v, json_type_string))
                return KS_ERR__PARSE;
        *s = json_object_get_string(v);
        *len = (size_t)json_object_get_string_len(v);
        return KS_ERR_NONE;
}

/* Object member: *out NULL when absent. */
static ks_err_t j_obj(json_object *o, const char *name, json_object **out)
{
        json_object *v = jfield(o, name);

        *out = v;
        return !v || json_object_is_type(v, json_type_object) ? KS_ERR_NONE : KS_ERR__PARSE;
}

static ks_err_t j_arr(json_object *o, const char *name, json_object **out)
{
        json_object *v = jfield(o, name);

        *out = v;
        return !v || json_object_is_type(v, json_type_array) ? KS_ERR_NONE : KS_ERR__PARSE;
}

/* base64 member decoded into a malloc'd NUL-terminated buffer. */
static ks_err_t j_bytes(json_object *o, const char *name, uint8_t **out, size_t *len)
{
        const char *s;
        size_t n;
        ks_err_t err = j_str(o, name, &s, &n);

        *out = NULL;
        *len = 0;
        return err ? err : ks_etcd_b64_decode(s, n, out, len);
}

/* header.revision (0 when absent). */
static ks_err_t j_header_rev(json_object *o, int64_t *rev)
{
        json_object *h;
        ks_err_t err = j_obj(o, "header", &h);

        *rev = 0;
        if (err || !h)
                return err;
        return j_u63(h, "revision", rev);
}

/* The header revision of a unary answer: present and >= 1. */
static ks_err_t j_unary_rev(json_object *o, int64_t *rev)
{
        ks_err_t err = j_header_rev(o, rev);
        return err ? err : *rev < 1 ? KS_ERR__PARSE : KS_ERR_NONE;
}

/* A mvccpb.KeyValue.  p->key and p->value are malloc'd (free both). */
static ks_err_t j_kv(json_object *o, ks_kv_pair_t *p)
{
        ks_err_t err;

        memset(p, 0, sizeof(*p));
        if (!json_object_is_type(o, json_type_object))
                return KS_ERR__PARSE;
        if ((err = j_bytes(o, "key", &p->key, &p->key_len)) || (err = j_bytes(o, "value", &p->value, &p->value_len)) ||
            (err = j_u63(o, "create_revision", &p->create_rev)) || (err = j_u63(o, "mod_revision", &p->mod_rev)) ||
            (err = j_u63(o, "version", &p->version)) || (err = j_i64(o, "lease", &p->lease)))
                goto fail;
        if (p->key_len == 0) {
                err = KS_ERR__PARSE;
                goto fail;
        }
        return KS_ERR_NONE;
fail:
        free(p->key);
        free(p->value);
        memset(p, 0, sizeof(*p));
        return err;
}

static void error_from(json_object *msg_holder, const char *msg_field, int64_t code, ks_etcd_error_t *out)
{
        const char *s = "";
        size_t n = 0;

        out->code = code < INT_MIN || code > INT_MAX ? -1 : (int)code;
        (void)j_str(msg_holder, msg_field, &s, &n);
        ks_log_clean(out->message, sizeof(out->message), s, n);
}

ks_err_t ks_etcd_json_error(const char *buf, size_t len, ks_etcd_error_t *out)
{
        json_object *o, *e;
        ks_err_t err;
        int64_t code = -1;

        memset(out, 0, sizeof(*out));
        out->code = -1;
        if ((err = json_load(buf, len, &o)))
                return err;
        e = jfield(o, "error");
        if (e && json_object_is_type(e, json_type_string)) {
                /* Unary: {"error":"..","message":"..","code":N}. */
                if (!jfield(o, "code") || j_i64(o, "code", &code))
                        code = -1;
                error_from(o, jfield(o, "message") ? "message" : "error", code, out);
        } else if (e && json_object_is_type(e, json_type_object)) {
                /* Stream: {"error":{"grpc_code":N,"message":".."}}. */
                if (!jfield(e, "grpc_code") || j_i64(e, "grpc_code", &code))
                        code = -1;
                error_from(e, "message", code, out);
        } else {
                err = KS_ERR__PARSE;
        }
        json_object_put(o);
        return err;
}

ks_err_t ks_etcd_json_header(const char *buf, size_t len, int64_t *revision)
{
        json_object *o;
        ks_err_t err = json_load(buf, len, &o);

        *revision = 0;
        if (err)
                return err;
        err = j_unary_rev(o, revision);
        json_object_put(o);
        return err;
}

ks_err_t ks_etcd_json_range(const char *buf, size_t len, ks_kv_result_t *out)
{
        json_object *o, *kvs;
        ks_err_t err;

        memset(out, 0, sizeof(*out));
        if ((err = json_load(buf, len, &o)))
                return err;
        if ((err = j_unary_rev(o, &out->revision)) || (err = j_arr(o, "kvs", &kvs)))
                goto out;
        for (size_t i = 0; kvs && i < json_object_array_length(kvs); i++) {
                ks_kv_pair_t p;
                if ((err = j_kv(json_object_array_get_idx(kvs, i), &p)))
                        break;
                err = ks_kv_result_add(out, &p, true);
                free(p.key);
                free(p.value);
                if (err)
                        break;
        }
out:
        if (err) {
                ks_kv_result_free(out);
                out->revision = 0;
        }
        json_object_put(o);
        return err;
}

ks_err_t ks_etcd_json_delete(const char *buf, size_t len, int64_t *deleted, int64_t *revision)
{
        json_object *o;
        ks_err_t err = json_load(buf, len, &o);

        *deleted = *revision = 0;
        if (err)
                return err;
        if (!(err = j_unary_rev(o, revision)))
                err = j_u63(o, "deleted", deleted);
        json_object_put(o);
        return err;
}

ks_err_t ks_etcd_json_txn(const char *buf, size_t len, bool *succeeded, int64_t *revision)
{
        json_object *o, *r;
        ks_err_t err = json_load(buf, len, &o);

        *succeeded = false;
        *revision = 0;
        if (err)
                return err;
        if (!(err = j_unary_rev(o, revision)) && !(err = j_bool(o, "succeeded", succeeded)))
                err = j_arr(o, "responses", &r);
        json_object_put(o);
        return err;
}

ks_err_t ks_etcd_json_lease_grant(const char *buf, size_t len, int64_t *id, int64_t *ttl)
{
        json_object *o;
        const char *e;
        size_t elen;
        int64_t rev;
        ks_err_t err = json_load(buf, len, &o);

        *id = *ttl = 0;
        if (err)
                return err;
        if (!(err = j_unary_rev(o, &rev)) && !(err = j_i64(o, "ID", id)) && !(err = j_i64(o, "TTL", ttl)) &&
            !(err = j_str(o, "error", &e, &elen)))
                err = elen || *id == 0 || *ttl <= 0 ? KS_ERR__PARSE : KS_ERR_NONE;
        if (err)
                *id = *ttl = 0;
        json_object_put(o);
        return err;
}

ks_err_t ks_etcd_json_keepalive(const char *buf, size_t len, int64_t *ttl, ks_etcd_error_t *eout)
{
        json_object *o, *r;
        ks_err_t err;

        *ttl = 0;
        if (eout) {
                memset(eout, 0, sizeof(*eout));
                eout->code = -1;
        }
        if ((err = json_load(buf, len, &o)))
                return err;
        if (jfield(o, "error")) {
                json_object_put(o);
                if (eout && ks_etcd_json_error(buf, len, eout))
                        return KS_ERR__PARSE;
                return KS_ERR__NOT_FOUND;
        }
        if (!(err = j_obj(o, "result", &r))) {
                if (!r)
                        err = KS_ERR__PARSE;
                else if (!(err = j_i64(r, "TTL", ttl)) && *ttl < 0)
                        *ttl = 0;
        }
        json_object_put(o);
        return err;
}

ks_err_t ks_etcd_json_auth(const char *buf, size_t len, char **token)
{
        json_object *o;
        const char *t;
        size_t n;
        ks_err_t err = json_load(buf, len, &o);

        *token = NULL;
        if (err)
                return err;
        if (!(err = j_str(o, "token", &t, &n))) {
                /* Goes into an HTTP header: printable ASCII only. */
                for (size_t i = 0; i < n && !err; i++)
                        if ((unsigned char)t[i] < 0x21 || (unsigned char)t[i] > 0x7e)
                                err = KS_ERR__PARSE;
                if (!err && n == 0)
                        err = KS_ERR__PARSE;
                if (!err && !(*token = strndup(t, n)))
                        err = KS_ERR__NOMEM;
        }
        json_object_put(o);
        return err;
}

void ks_etcd_watch_msg_free(ks_etcd_watch_msg_t *m)
{
        for (size_t i = 0; i < m->nevents; i++) {
                free(m->events[i].kv.key);
                free(m->events[i].kv.value);
        }
        free(m->events);
        m->events = NULL;
        m->nevents = 0;
}

/* One mvccpb.Event into e (key/value malloc'd). */
static ks_err_t j_event(json_object *o, ks_kv_event_t *e)
{
        json_object *t, *kv;
        ks_err_t err;

        memset(e, 0, sizeof(*e));
        if (!json_object_is_type(o, json_type_object))
                return KS_ERR__PARSE;
        e->type = KS_KV_EV_PUT;
        t = jfield(o, "type");
        if (t && json_object_is_type(t, json_type_string)) {
                const char *s = json_object_get_string(t);
                if (!strcmp(s, "DELETE"))
                        e->type = KS_KV_EV_DELETE;
                else if (strcmp(s, "PUT") != 0)
                        return KS_ERR__PARSE;
        } else if (t && json_object_is_type(t, json_type_int)) {
                int64_t v = json_object_get_int64(t);
                if (v != 0 && v != 1)
                        return KS_ERR__PARSE;
                e->type = v ? KS_KV_EV_DELETE : KS_KV_EV_PUT;
        } else if (t) {
                return KS_ERR__PARSE;
        }
        if ((err = j_obj(o, "kv", &kv)))
                return err;
        if (!kv)
                return KS_ERR__PARSE;
        if ((err = j_kv(kv, &e->kv)))
                return err;
        if (e->kv.mod_rev < 1) {
                free(e->kv.key);
                free(e->kv.value);
                memset(&e->kv, 0, sizeof(e->kv));
                return KS_ERR__PARSE;
        }
        e->revision = e->kv.mod_rev;
        if (e->type == KS_KV_EV_DELETE) {
                /* kv.h: key and the deletion revision only. */
                e->kv.value[0] = 0;
                e->kv.value_len = 0;
                e->kv.create_rev = e->kv.version = e->kv.lease = 0;
        }
        return KS_ERR_NONE;
}

ks_err_t ks_etcd_json_watch(const char *buf, size_t len, ks_etcd_watch_msg_t *out)
{
        json_object *o, *r, *evs;
        const char *s;
        size_t n;
        ks_err_t err;

        memset(out, 0, sizeof(*out));
        out->error.code = -1;
        if ((err = json_load(buf, len, &o)))
                return err;
        if (jfield(o, "error")) {
                json_object_put(o);
                out->is_error = true;
                return ks_etcd_json_error(buf, len, &out->error);
        }
        if ((err = j_obj(o, "result", &r)))
                goto out;
        if (!r) {
                err = KS_ERR__PARSE;
                goto out;
        }
        if ((err = j_header_rev(r, &out->header_rev)) || (err = j_bool(r, "created", &out->created)) ||
            (err = j_bool(r, "canceled", &out->canceled)) || (err = j_u63(r, "compact_revision", &out->compact_rev)) ||
            (err = j_str(r, "cancel_reason", &s, &n)) || (err = j_arr(r, "events", &evs)))
                goto out;
        ks_log_clean(out->cancel_reason, sizeof(out->cancel_reason), s, n);
        size_t cnt = evs ? json_object_array_length(evs) : 0;
        if (cnt) {
                if (!(out->events = calloc(cnt, sizeof(*out->events)))) {
                        err = KS_ERR__NOMEM;
                        goto out;
                }
                for (size_t i = 0; i < cnt; i++) {
                        if ((err = j_event(json_object_array_get_idx(evs, i), &out->events[i])))
                                goto out;
                        out->nevents++;
                        if (i > 0 && out->events[i].revision < out->events[i - 1].revision) {
                                err = KS_ERR__PARSE;
                                goto out;
                        }
                }
        }
out:
        if (err) {
                ks_etcd_watch_msg_free(out);
                memset(out, 0, sizeof(*out));
                out->error.code = -1;
        }
        json_object_put(o);
        return err;
}

/* ================================================================ lines */

static ks_err_t lines_append(ks_etcd_lines_t *l, const char *p, size_t n)
{
        if (l->len + n > l->cap) {
                size_t ncap = l->cap ? l->cap : 4096;
                while (ncap < l->len + n)
                        ncap *= 2;
                char *nb = realloc(l->buf, ncap);
                if (!nb)
                        return KS_ERR__NOMEM;
                l->buf = nb;
                l->cap = ncap;
        }
        memcpy(l->buf + l->len, p, n);
        l->len += n;
        return KS_ERR_NONE;
}

int ks_etcd_lines_feed(ks_etcd_lines_t *l, const char *data, size_t n, ks_etcd_line_fn *fn, void *opaque)
{
        size_t max = l->max ? l->max : ETCD_MAX_WATCH_LINE;
        size_t i = 0;

        while (i < n) {
                const char *nl = memchr(data + i, '\n', n - i);
                size_t seg = nl ? (size_t)(nl - (data + i)) : n - i;
                if (seg > max || l->len + seg > max) {
                        l->len = 0;
                        return -1;
                }
                if (!nl) {
                        if (lines_append(l, data + i, seg)) {
                                l->len = 0;
                                return -1;
                        }
                        return 0;
                }
                const char *line = data + i;
                size_t ll = seg;
                if (l->len) {
                        if (lines_append(l, data + i, seg)) {
                                l->len = 0;
                                return -1;
                        }
                        line = l->buf;
                        ll = l->len;
                }
                i += seg + 1;
                if (ll && line[ll - 1] == '\r')
                        ll--;
                int r = ll ? fn(opaque, line, ll) : 0;
                l->len = 0;
                if (r)
                        return r;
        }
        return 0;
}

void ks_etcd_lines_reset(ks_etcd_lines_t *l)
{
        l->len = 0;
}

void ks_etcd_lines_free(ks_etcd_lines_t *l)
{
        free(l->buf);
        l->buf = NULL;
        l->len = l->cap = 0;
}

/* ================================================================ JSON out */

/* A growing request body.  Allocation failure sticks (oom) and is checked
 * once at the end. */
typedef struct sb {
        char *p;
        size_t len, cap;
        bool oom;
} sb_t;

static bool sb_reserve(sb_t *s, size_t more)
{
        if (s->oom)
                return false;
        if (s->len + more + 1 <= s->cap)
                return true;
        size_t ncap = s->cap ? s->cap : 256;
        while (ncap < s->len + more + 1)
                ncap *= 2;
        char *n = realloc(s->p, ncap);
        if (!n) {
                s->oom = true;
                return false;
        }
        s->p = n;
        s->cap = ncap;
        return true;
}

static void sb_put(sb_t *s, const char *str)
{
        size_t n = strlen(str);
        if (!sb_reserve(s, n))
                return;
        memcpy(s->p + s->len, str, n + 1);
        s->len += n;
}

/* "name":"<base64>" */
static void sb_b64(sb_t *s, const char *name, const void *p, size_t n)
{
        sb_put(s, "\"");
        sb_put(s, name);
        sb_put(s, "\":\"");
        if (!sb_reserve(s, KS_ETCD_B64_LEN(n) + 2))
                return;
        s->len += ks_etcd_b64_encode(p, n, s->p + s->len);
        sb_put(s, "\"");
}

/* "name":"<int64>" */
static void sb_i64(sb_t *s, const char *name, int64_t v)
{
        char tmp[64];
        snprintf(tmp, sizeof(tmp), "\"%s\":\"%" PRId64 "\"", name, v);
        sb_put(s, tmp);
}

static void sb_free(sb_t *s)
{
        free(s->p);
        memset(s, 0, sizeof(*s));
}

/* ============================================== ranges */

/* "key":..[,"range_end":..] of a span; "\0" is etcd's "to the end". */
static void sb_span(sb_t *b, const ks_kv_span_t *s)
{
        sb_b64(b, "key", s->key, s->key_len);
        if (s->end) {
                sb_put(b, ",");
                if (s->end_len == 0)
                        sb_b64(b, "range_end", "", 1);
                else
                        sb_b64(b, "range_end", s->end, s->end_len);
        }
}

/* ================================================================ store */

typedef struct etcd_kv {
        ks_kv_t base;
        char **eps; /* "http://host:port", owned */
        int neps;
        int cur_ep;                /* __atomic: the endpoint that answered last */
        char *endpoints;           /* as configured, for messages */
        char *username, *password; /* NULL: no auth */
        int64_t req_timeout_ms, conn_timeout_ms;

        pthread_mutex_t mu; /* see the top of the file */
        pthread_cond_t cv;  /* detached reached 0 */
        CURL *idle[ETCD_POOL_IDLE];
        int nidle;
        char *token; /* NULL: none (no auth, or etcd has auth disabled) */
        uint64_t token_gen;
        ks_kv_watch_t *watches;
        int detached;         /* self-cancelled watch threads still running */
        bool cb_busy;         /* a watch callback is running (one at a time) */
        pthread_cond_t cb_cv; /* cb_busy cleared, or a watch cancelled */

        pthread_mutex_t auth_mu;
} etcd_kv_t;

static const ks_kv_ops_t etcd_ops;

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_OK;

static void curl_init_once(void)
{
        curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ------------------------------------------------------------- endpoints */

static bool host_char(unsigned char c)
{
        return isalnum(c) || c == '.' || c == '-' || c == '_';
}

/* One endpoint "[scheme://]host[:port][/]" into "scheme://host:port". */
static ks_err_t endpoint_norm(const char *s, size_t n, char **out, char *why, size_t whylen)
{
        const char *scheme = "http", *p = s, *e = s + n;
        char host[256];
        long port = ETCD_DEFAULT_PORT;
        size_t hl;
        bool v6 = false;

        if (n >= 7 && !strncasecmp(s, "http://", 7)) {
                p += 7;
        } else if (n >= 8 && !strncasecmp(s, "https://", 8)) {
                scheme = "https";
                p += 8;
        } else if (memmem(s, n, "://", 3)) {
                snprintf(why, whylen, "endpoint \"%.*s\": only http:// and https:// are supported", (int)n, s);
                return KS_ERR__INVALID_ARG;
        }
        if (e > p && e[-1] == '/')
                e--;
        const char *h = p, *hend;
        if (p < e && *p == '[') {
                hend = memchr(p, ']', (size_t)(e - p));
                if (!hend || hend == p + 1) {
                        snprintf(why, whylen, "endpoint \"%.*s\": unterminated [IPv6] address", (int)n, s);
                        return KS_ERR__INVALID_ARG;
                }
                h = p + 1;
                for (const char *q = h; q < hend; q++)
                        if (!isxdigit((unsigned char)*q) && *q != ':' && *q != '.') {
                                snprintf(why, whylen, "endpoint \"%.*s\": invalid IPv6 address", (int)n, s);
                                return KS_ERR__INVALID_ARG;
                        }
                v6 = true;
                p = hend + 1;
        } else {
                while (p < e && host_char((unsigned char)*p))
                        p++;
                hend = p;
        }
        hl = (size_t)(hend - h);
        if (hl == 0 || hl >= sizeof(host)) {
                snprintf(why, whylen, "endpoint \"%.*s\": no host", (int)n, s);
                return KS_ERR__INVALID_ARG;
        }
        memcpy(host, h, hl);
        host[hl] = 0;
        if (p < e && *p == ':') {
                p++;
                const char *ps = p;
                port = 0;
                while (p < e && isdigit((unsigned char)*p) && port <= 65535)
                        port = port * 10 + (*p++ - '0');
                if (p == ps || port < 1 || port > 65535) {
                        snprintf(why, whylen, "endpoint \"%.*s\": bad port", (int)n, s);
                        return KS_ERR__INVALID_ARG;
                }
        }
        if (p != e) {
                snprintf(why, whylen, "endpoint \"%.*s\": unexpected \"%.*s\" (expected [http://]host[:port])", (int)n,
                         s, (int)(e - p), p);
                return KS_ERR__INVALID_ARG;
        }
        if (asprintf(out, "%s://%s%s%s:%ld", scheme, v6 ? "[" : "", host, v6 ? "]" : "", port) < 0) {
                *out = NULL;
                return KS_ERR__NOMEM;
        }
        return KS_ERR_NONE;
}

/* Parses a comma-separated endpoint list into eps[0..*neps) (each
 * malloc'ed, normalised; on failure the caller frees what was stored). */
static ks_err_t endpoints_parse_list(const char *list, char **eps, int *neps, char *why, size_t whylen)
{
        const char *p = list;

        if (!list || !*list) {
                snprintf(why, whylen, "the etcd endpoint list is empty");
                return KS_ERR__INVALID_ARG;
        }
        for (;;) {
                const char *c = strchr(p, ',');
                const char *end = c ? c : p + strlen(p);
                const char *a = p, *b = end;
                while (a < b && isspace((unsigned char)*a))
                        a++;
                while (b > a && isspace((unsigned char)b[-1]))
                        b--;
                if (a == b) {
                        snprintf(why, whylen, "the etcd endpoint list \"%s\" has an empty entry", list);
                        return KS_ERR__INVALID_ARG;
                }
                if (*neps == ETCD_MAX_ENDPOINTS) {
                        snprintf(why, whylen, "more than %d etcd endpoints", ETCD_MAX_ENDPOINTS);
                        return KS_ERR__INVALID_ARG;
                }
                char *ep = NULL;
                ks_err_t err = endpoint_norm(a, (size_t)(b - a), &ep, why, whylen);
                if (err)
                        return err;
                eps[(*neps)++] = ep;
                if (!c)
                        break;
                p = c + 1;
        }
        return KS_ERR_NONE;
}

static ks_err_t endpoints_parse(etcd_kv_t *e, const char *list, char *why, size_t whylen)
{
        return endpoints_parse_list(list, e->eps, &e->neps, why, whylen);
}

ks_err_t ks_kv_etcd_endpoints_check(const char *list, char *why, size_t whylen)
{
        char *eps[ETCD_MAX_ENDPOINTS];
        int n = 0;
        char none[1];
        ks_err_t err = endpoints_parse_list(list, eps, &n, why ? why : none, why ? whylen : sizeof(none));
        for (int i = 0; i < n; i++)
                free(eps[i]);
        return err;
}

/* ------------------------------------------------------------- HTTP */

/* The answer to one HTTP exchange. */
typedef struct etcd_resp {
        char *buf;
        size_t len, cap;
        bool too_large;
} etcd_resp_t;

static void resp_free(etcd_resp_t *r)
{
        free(r->buf);
        memset(r, 0, sizeof(*r));
}

static size_t on_resp(char *ptr, size_t size, size_t nmemb, void *ud)
{
        etcd_resp_t *r = ud;
        size_t n = size * nmemb;

        if (n > ETCD_MAX_RESPONSE - r->len) {
                r->too_large = true;
                return 0;
        }
        if (r->len + n + 1 > r->cap) {
                size_t ncap = r->cap ? r->cap : 1024;
                while (ncap < r->len + n + 1)
                        ncap *= 2;
                char *nb = realloc(r->buf, ncap);
                if (!nb)
                        return 0;
                r->buf = nb;
                r->cap = ncap;
        }
        memcpy(r->buf + r->len, ptr, n);
        r->len += n;
        r->buf[r->len] = 0;
        return n;
}

static CURL *pool_get(etcd_kv_t *e)
{
        CURL *h = NULL;

        pthread_mutex_lock(&e->mu);
        if (e->nidle > 0)
                h = e->idle[--e->nidle];
        pthread_mutex_unlock(&e->mu);
        return h ? h : curl_easy_init();
}

static void pool_put(etcd_kv_t *e, CURL *h)
{
        pthread_mutex_lock(&e->mu);
        if (e->nidle < ETCD_POOL_IDLE) {
                e->idle[e->nidle++] = h;
                h = NULL;
        }
        pthread_mutex_unlock(&e->mu);
        if (h)
                curl_easy_cleanup(h);
}

/* Request headers: JSON, no 100-continue, "hasleader", the token. */
static struct curl_slist *headers_make(const char *token)
{
        static const char *const fixed[] = {"Content-Type: application/json",
                                            "Expect:", "Grpc-Metadata-hasleader: true"};
        struct curl_slist *h = NULL, *n;

        for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
                if (!(n = curl_slist_append(h, fixed[i])))
                        goto fail;
                h = n;
        }
        if (token) {
                char *line;
                if (asprintf(&line, "Authorization: %s", token) < 0)
                        goto fail;
                n = curl_slist_append(h, line);
                free(line);
                if (!n)
                        goto fail;
                h = n;
        }
        return h;
fail:
        curl_slist_free_all(h);
        return NULL;
}

static void common_opts(etcd_kv_t *e, CURL *h, const char *url, struct curl_slist *hdrs, char *errbuf)
{
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)e->conn_timeout_ms);
        curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(h, CURLOPT_USERAGENT, "kafscale");
}

/* One exchange: POST body to eps[ep]+path.  Returns the curl code; on
 * CURLE_OK *status and r hold the answer.  *sent tells whether any byte of
 * the request may have reached the server. */
static CURLcode http_post(etcd_kv_t *e, int ep, const char *path, const char *body, size_t blen, const char *token,
                          int64_t timeout_ms, etcd_resp_t *r, long *status, bool *sent, char *curl_err)
{
        char *url = NULL;
        struct curl_slist *hdrs = NULL;
        CURL *h = NULL;
        CURLcode cc = CURLE_OUT_OF_MEMORY;
        long reqsize = 0;

        resp_free(r);
        *status = 0;
        *sent = false;
        curl_err[0] = 0;
        if (asprintf(&url, "%s%s", e->eps[ep], path) < 0) {
                url = NULL;
                goto out;
        }
        if (!(hdrs = headers_make(token)) || !(h = pool_get(e)))
                goto out;
        curl_easy_reset(h); /* keeps the handle's live connections */
        common_opts(e, h, url, hdrs, curl_err);
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS,
                         (long)(timeout_ms > 0 && timeout_ms < e->req_timeout_ms ? timeout_ms : e->req_timeout_ms));
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_resp);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
        cc = curl_easy_perform(h);
        if (cc == CURLE_OK)
                curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
        curl_easy_getinfo(h, CURLINFO_REQUEST_SIZE, &reqsize);
        *sent = cc == CURLE_OK || (reqsize > 0 && cc != CURLE_COULDNT_CONNECT && cc != CURLE_COULDNT_RESOLVE_HOST);
        curl_easy_reset(h); /* drop pointers into this call */
        pool_put(e, h);
        h = NULL;
        if (cc != CURLE_OK && !curl_err[0])
                snprintf(curl_err, CURL_ERROR_SIZE, "%s", curl_easy_strerror(cc));
out:
        if (cc == CURLE_OUT_OF_MEMORY && !curl_err[0])
                snprintf(curl_err, CURL_ERROR_SIZE, "out of memory");
        curl_slist_free_all(hdrs);
        free(url);
        return cc;
}

/* ------------------------------------------------------------- errors */

static bool msg_has(const ks_etcd_error_t *ee, const char *s)
{
        return strstr(ee->message, s) != NULL;
}

static bool err_is_auth_token(long status, const ks_etcd_error_t *ee)
{
        return msg_has(ee, "invalid auth token") || msg_has(ee, "revision of auth store is old") ||
               (status == 401 && ee->code == 16);
}

/* etcd could not serve it now (another member may). */
static bool err_is_unavailable(long status, const ks_etcd_error_t *ee)
{
        static const char *const msgs[] = {
            "no leader",        "leader changed",        "not capable",        "too many requests",
            "timed out",        "proposal dropped",      "server stopped",     "no address available",
            "TransientFailure", "connection is closing", "Error while dialing"};
        if (status >= 500 || ee->code == 14 /* Unavailable */ || ee->code == 4 /* DeadlineExceeded */)
                return true;
        for (size_t i = 0; i < sizeof(msgs) / sizeof(msgs[0]); i++)
                if (msg_has(ee, msgs[i]))
                        return true;
        return false;
}

/* etcd refused it before proposing it: a write may be sent again. */
static bool err_not_applied(const ks_etcd_error_t *ee)
{
        static const char *const msgs[] = {"etcdserver: no leader",   "raft proposal dropped",
                                           "etcdserver: not capable", "etcdserver: too many requests",
                                           "no address available",    "TransientFailure",
                                           "connection is closing",   "Error while dialing"};
        for (size_t i = 0; i < sizeof(msgs) / sizeof(msgs[0]); i++)
                if (msg_has(ee, msgs[i]))
                        return true;
        return false;
}

static bool err_is_timeout(const ks_etcd_error_t *ee)
{
        return ee->code == 4 || msg_has(ee, "timed out") || msg_has(ee, "deadline exceeded");
}

/* Maps etcd's error answer for `op` to a kv.h error, logging what is not an
 * ordinary outcome. */
static ks_err_t err_map(const char *op, int ep_idx, const etcd_kv_t *e, long status, const ks_etcd_error_t *ee)
{
        const char *ep = ep_idx >= 0 ? e->eps[ep_idx] : "";

        if (msg_has(ee, "lease not found"))
                return KS_ERR__LEASE_LOST;
        if (msg_has(ee, "too many operations in txn") || msg_has(ee, "request is too large")) {
                ks_log_warn("etcd_request_too_large", "op=%s endpoint=%s message=\"%s\"", op, ep, ee->message);
                return KS_ERR__TOO_LARGE;
        }
        if (msg_has(ee, "user name is empty") || msg_has(ee, "permission denied") ||
            msg_has(ee, "authentication failed") || msg_has(ee, "invalid auth token") ||
            msg_has(ee, "user name not found")) {
                ks_log_error("etcd_auth_error", "op=%s endpoint=%s status=%ld code=%d message=\"%s\"", op, ep, status,
                             ee->code, ee->message);
                return KS_ERR__IO;
        }
        if (err_is_unavailable(status, ee)) {
                ks_log_warn("etcd_unavailable", "op=%s endpoint=%s status=%ld code=%d message=\"%s\"", op, ep, status,
                            ee->code, ee->message);
                return err_is_timeout(ee) ? KS_ERR__TIMEOUT : KS_ERR__UNAVAILABLE;
        }
        if (ee->code == 3 /* InvalidArgument */ || ee->code == 11 /* OutOfRange */) {
                ks_log_warn("etcd_invalid_request", "op=%s endpoint=%s message=\"%s\"", op, ep, ee->message);
                return KS_ERR__INVALID_ARG;
        }
        ks_log_error("etcd_request_failed", "op=%s endpoint=%s status=%ld code=%d message=\"%s\"", op, ep, status,
                     ee->code, ee->message);
        return KS_ERR__IO;
}

/* Decodes a non-2xx answer's error (a body that is not one: code -1 and the
 * start of the body as message). */
static void answer_error(long status, const etcd_resp_t *r, ks_etcd_error_t *ee)
{
        if (!r->len || ks_etcd_json_error(r->buf, r->len, ee) != KS_ERR_NONE) {
                ee->code = -1;
                if (r->len)
                        ks_log_clean(ee->message, sizeof(ee->message), r->buf, r->len);
                else
                        snprintf(ee->message, sizeof(ee->message), "HTTP %ld", status);
        }
}

/* ------------------------------------------------------------- auth */

static void token_get(etcd_kv_t *e, char **token, uint64_t *gen)
{
        pthread_mutex_lock(&e->mu);
        *token = e->token ? strdup(e->token) : NULL;
        *gen = e->token_gen;
        pthread_mutex_unlock(&e->mu);
}

/* POST /v3/auth/authenticate on eps[ep]; stores the token.  *answered tells
 * whether etcd answered (else try another endpoint). */
static ks_err_t authenticate(etcd_kv_t *e, int ep, bool *answered, char *why, size_t whylen)
{
        json_object *req = json_object_new_object();
        etcd_resp_t r = {0};
        char curl_err[CURL_ERROR_SIZE];
        long status = 0;
        bool sent;
        ks_err_t err;

        *answered = false;
        if (!req)
                return KS_ERR__NOMEM;
        json_object_object_add(req, "name", json_object_new_string(e->username));
        json_object_object_add(req, "password", json_object_new_string(e->password));
        size_t blen;
        const char *body = json_object_to_json_string_length(req, JSON_C_TO_STRING_PLAIN, &blen);
        CURLcode cc = body ? http_post(e, ep, "/v3/auth/authenticate", body, blen, NULL, 0, &r, &status, &sent, curl_err)
                           : CURLE_OUT_OF_MEMORY;
        if (cc != CURLE_OK) {
                snprintf(why, whylen, "etcd at %s did not answer: %s", e->eps[ep], curl_err);
                err = cc == CURLE_OPERATION_TIMEDOUT ? KS_ERR__TIMEOUT
                      : cc == CURLE_OUT_OF_MEMORY    ? KS_ERR__NOMEM
                                                     : KS_ERR__UNAVAILABLE;
                goto out;
        }
        *answered = true;
        if (status / 100 == 2) {
                char *tok = NULL;
                if ((err = ks_etcd_json_auth(r.buf, r.len, &tok))) {
                        snprintf(why, whylen, "etcd at %s sent an authentication answer that cannot be decoded",
                                 e->eps[ep]);
                        ks_log_warn("etcd_bad_answer", "op=authenticate endpoint=%s", e->eps[ep]);
                        goto out;
                }
                pthread_mutex_lock(&e->mu);
                free(e->token);
                e->token = tok;
                e->token_gen++;
                pthread_mutex_unlock(&e->mu);
                goto out;
        }
        ks_etcd_error_t ee;
        answer_error(status, &r, &ee);
        if (msg_has(&ee, "authentication is not enabled")) {
                /* Credentials configured but not needed: go on without. */
                ks_log_warn("etcd_auth_not_enabled", "endpoint=%s user=\"%s\" detail=\"credentials ignored\"",
                            e->eps[ep], e->username);
                pthread_mutex_lock(&e->mu);
                free(e->token);
                e->token = NULL;
                e->token_gen++;
                pthread_mutex_unlock(&e->mu);
                err = KS_ERR_NONE;
        } else if (msg_has(&ee, "authentication failed") || msg_has(&ee, "user name not found")) {
                snprintf(why, whylen, "etcd at %s rejected user \"%s\": %s (check the etcd user name and password)",
                         e->eps[ep], e->username, ee.message);
                err = KS_ERR__INVALID_ARG;
        } else if (err_is_unavailable(status, &ee)) {
                *answered = false;
                snprintf(why, whylen, "etcd at %s cannot authenticate now: %s", e->eps[ep], ee.message);
                err = err_is_timeout(&ee) ? KS_ERR__TIMEOUT : KS_ERR__UNAVAILABLE;
        } else {
                snprintf(why, whylen, "etcd at %s refused authentication: HTTP %ld: %s", e->eps[ep], status,
                         ee.message);
                err = KS_ERR__IO;
        }
out:
        resp_free(&r);
        json_object_put(req);
        return err;
}

/* The token used with generation seen_gen was refused: renew it (once for
 * everyone who saw that generation). */
static ks_err_t reauthenticate(etcd_kv_t *e, int ep, uint64_t seen_gen)
{
        char why[512];
        bool answered;
        ks_err_t err = KS_ERR_NONE;

        pthread_mutex_lock(&e->auth_mu);
        pthread_mutex_lock(&e->mu);
        bool stale = e->token_gen == seen_gen;
        pthread_mutex_unlock(&e->mu);
        if (stale) {
                err = authenticate(e, ep, &answered, why, sizeof(why));
                if (err)
                        ks_log_error("etcd_reauth_failed", "endpoint=%s err=%s detail=\"%s\"", e->eps[ep],
                                     ks_err_name(err), why);
                else
                        ks_log_info("etcd_reauthenticated", "endpoint=%s user=\"%s\"", e->eps[ep], e->username);
        }
        pthread_mutex_unlock(&e->auth_mu);
        return err;
}

/* ------------------------------------------------------------- calls */

typedef struct etcd_req {
        const char *op;   /* for logs */
        const char *path; /* "/v3/kv/range" */
        const char *body;
        size_t len;
        bool idempotent; /* may be sent again after it may have been applied */
        int64_t timeout_ms; /* per exchange; 0: the request timeout */
} etcd_req_t;

typedef struct etcd_ans {
        long status;
        etcd_resp_t r;
        int ep;             /* the endpoint that answered */
        bool maybe_applied; /* an earlier attempt may have been applied */
} etcd_ans_t;

static void ep_failed(etcd_kv_t *e, int ep)
{
        int cur = ep;
        __atomic_compare_exchange_n(&e->cur_ep, &cur, (ep + 1) % e->neps, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}

/* Runs req with failover.  KS_ERR_NONE: an answer from etcd is in ans (any
 * HTTP status the caller must interpret; an "unavailable" one only when the
 * request could not be sent elsewhere); ans->r is freed by the caller.
 * Otherwise no endpoint answered: KS_ERR__UNAVAILABLE / KS_ERR__TIMEOUT
 * (logged), or KS_ERR__NOMEM / KS_ERR__TOO_LARGE. */
static ks_err_t etcd_exec(etcd_kv_t *e, const etcd_req_t *req, etcd_ans_t *ans)
{
        int start = __atomic_load_n(&e->cur_ep, __ATOMIC_RELAXED);
        bool reauthed = false, timed_out = false;
        char curl_err[CURL_ERROR_SIZE], last[CURL_ERROR_SIZE + 64] = "";

        memset(ans, 0, sizeof(*ans));
        for (int i = 0; i < e->neps;) {
                int ep = (start + i) % e->neps;
                char *token;
                uint64_t gen;
                bool sent;
                token_get(e, &token, &gen);
                CURLcode cc =
                    http_post(e, ep, req->path, req->body, req->len, token, req->timeout_ms, &ans->r, &ans->status,
                              &sent, curl_err);
                free(token);
                if (cc == CURLE_OUT_OF_MEMORY)
                        return KS_ERR__NOMEM;
                if (cc != CURLE_OK) {
                        if (ans->r.too_large) {
                                ks_log_error("etcd_answer_too_large", "op=%s endpoint=%s limit=%u", req->op, e->eps[ep],
                                             ETCD_MAX_RESPONSE);
                                resp_free(&ans->r);
                                return KS_ERR__TOO_LARGE;
                        }
                        timed_out = cc == CURLE_OPERATION_TIMEDOUT;
                        snprintf(last, sizeof(last), "%s: %s", e->eps[ep], curl_err);
                        ep_failed(e, ep);
                        if (sent && !req->idempotent) {
                                ks_log_warn("etcd_write_outcome_unknown", "op=%s endpoint=%s error=\"%s\"", req->op,
                                            e->eps[ep], curl_err);
                                resp_free(&ans->r);
                                return timed_out ? KS_ERR__TIMEOUT : KS_ERR__UNAVAILABLE;
                        }
                        ks_log_debug("etcd_endpoint_failed", "op=%s endpoint=%s error=\"%s\"", req->op, e->eps[ep],
                                     curl_err);
                        if (sent)
                                ans->maybe_applied = true;
                        i++;
                        continue;
                }
                ans->ep = ep;
                if (ans->status / 100 == 2) {
                        __atomic_store_n(&e->cur_ep, ep, __ATOMIC_RELAXED);
                        return KS_ERR_NONE;
                }
                ks_etcd_error_t ee;
                answer_error(ans->status, &ans->r, &ee);
                if (e->username && !reauthed && err_is_auth_token(ans->status, &ee)) {
                        reauthed = true;
                        if (reauthenticate(e, ep, gen) == KS_ERR_NONE)
                                continue;   /* refused before being applied: same endpoint again */
                        return KS_ERR_NONE; /* the caller maps the refusal */
                }
                if (err_is_unavailable(ans->status, &ee)) {
                        if (req->idempotent || err_not_applied(&ee)) {
                                ks_log_debug("etcd_endpoint_failed", "op=%s endpoint=%s status=%ld message=\"%s\"",
                                             req->op, e->eps[ep], ans->status, ee.message);
                                snprintf(last, sizeof(last), "%s: %s", e->eps[ep], ee.message);
                                timed_out = err_is_timeout(&ee);
                                if (!err_not_applied(&ee))
                                        ans->maybe_applied = true;
                                ep_failed(e, ep);
                                i++;
                                continue;
                        }
                        ep_failed(e, ep); /* a write's unknown outcome: the caller is told */
                } else {
                        __atomic_store_n(&e->cur_ep, ep, __ATOMIC_RELAXED); /* a final answer */
                }
                return KS_ERR_NONE;
        }
        resp_free(&ans->r);
        ks_log_warn("etcd_request_failed", "op=%s endpoints=\"%s\" last_error=\"%s\"", req->op, e->endpoints, last);
        return timed_out ? KS_ERR__TIMEOUT : KS_ERR__UNAVAILABLE;
}

/* Runs a request built in b (freed here); on a 2xx answer the body is in
 * ans (caller frees ans->r), otherwise the error is mapped. */
/* etcd_call with a shorter timeout per exchange (0: the request timeout). */
static ks_err_t etcd_call_timeout(etcd_kv_t *e, const char *op, const char *path, sb_t *b, bool idempotent,
                                  int64_t timeout_ms, etcd_ans_t *ans)
{
        ks_err_t err;

        memset(ans, 0, sizeof(*ans));
        if (b->oom) {
                sb_free(b);
                return KS_ERR__NOMEM;
        }
        etcd_req_t req = {.op = op, .path = path, .body = b->p, .len = b->len, .idempotent = idempotent,
                          .timeout_ms = timeout_ms};
        err = etcd_exec(e, &req, ans);
        sb_free(b);
        if (err)
                return err;
        if (ans->status / 100 != 2) {
                ks_etcd_error_t ee;
                answer_error(ans->status, &ans->r, &ee);
                err = err_map(op, ans->ep, e, ans->status, &ee);
                if (err == KS_ERR__LEASE_LOST && ans->maybe_applied && !strcmp(op, "lease_revoke"))
                        err = KS_ERR_NONE; /* our earlier attempt revoked it */
                resp_free(&ans->r);
                return err;
        }
        return KS_ERR_NONE;
}

static ks_err_t etcd_call(etcd_kv_t *e, const char *op, const char *path, sb_t *b, bool idempotent, etcd_ans_t *ans)
{
        return etcd_call_timeout(e, op, path, b, idempotent, 0, ans);
}

static ks_err_t bad_answer(etcd_kv_t *e, const char *op, etcd_ans_t *ans, ks_err_t err)
{
        if (err == KS_ERR__PARSE)
                ks_log_warn("etcd_bad_answer", "op=%s endpoint=%s len=%zu", op, e->eps[ans->ep], ans->r.len);
        return err;
}

/* ------------------------------------------------------------- kv ops */

/* The size etcd would see, over-estimated (see kv.h). */
static size_t est_add(size_t acc, size_t a, size_t b, size_t c)
{
        size_t t = acc + a + b + c + ETCD_OP_OVERHEAD;
        return t < acc ? SIZE_MAX : t;
}

static bool est_too_large(const etcd_kv_t *e, size_t est)
{
        size_t user = e->username ? strlen(e->username) : 0;
        return est > KS_KV_ETCD_MAX_REQUEST_BYTES || est + ETCD_REQ_OVERHEAD + user > KS_KV_ETCD_MAX_REQUEST_BYTES;
}

static ks_err_t etcd_range(ks_kv_t *kv, const void *key, size_t key_len, const void *range_end, size_t range_end_len,
                           ks_kv_result_t *out)
{
        etcd_kv_t *e = (etcd_kv_t *)kv;
        ks_kv_span_t s = {0};
        etcd_ans_t ans;
        sb_t b = {0};
        ks_err_t err;

        if (!out)
                return KS_ERR__INVALID_ARG;
        memset(out, 0, sizeof(*out));
        if ((err = ks_kv_span_make(&s, key, key_len, range_end, range_end_len)))
                return err;
        if (est_too_large(e, est_add(0, s.key_len, s.end_len, 0)))
                return KS_ERR__TOO_LARGE;
        sb_put(&b, "{");
        sb_span(&b, &s);
        sb_put(&b, "}");
        if ((err = etcd_call(e, "range", "/v3/kv/range", &b, true, &ans)))
                return err;
        err = bad_answer(e, "range", &ans, ks_etcd_json_range(ans.r.buf, ans.r.len, out));
        resp_free(&ans.r);
        return err;
}

/* Appends a RequestPut / RequestDeleteRange body (no braces around). */
static void sb_op(sb_t *b, const ks_kv_op_t *o)
{
        ks_kv_span_t s = {0};

        if (o->type == KS_KV_OP_PUT) {
                sb_put(b, "\"request_put\":{");
                sb_b64(b, "key", o->key, o->key_len);
                sb_put(b, ",");
                sb_b64(b, "value", o->value ? o->value : "", o->value_len);
                if (o->lease) {
                        sb_put(b, ",");
                        sb_i64(b, "lease", o->lease);
                }
        } else {
                ks_kv_span_make(&s, o->key, o->key_len, o->range_end, o->range_end_len);
                sb_put(b, "\"request_delete_range\":{");
                sb_span(b, &s);
        }
        sb_put(b, "}");
}

static ks_err_t etcd_put(ks_kv_t *kv, const void *key, size_t key_len, const void *value, size_t value_len,
                         int64_t lease, int64_t *revision)
{
        etcd_kv_t *e = (etcd_kv_t *)kv;
        ks_kv_op_t op = {.type = KS_KV_OP_PUT,
                         .key = key,
                         .key_len = key_len,
                         .value = value,
                         .value_len = value_len,
                         .lease = lease};
        etcd_ans_t ans;
        sb_t b = {0};
        int64_t rev;
        ks_err_t err;

        if ((err = ks_kv_check_ops(&op, 1)))
                return err;
        if (est_too_large(e, est_add(0, key_len, value_len, 0)))
                return KS_ERR__TOO_LARGE;
        sb_put(&b, "{");
        sb_b64(&b, "key", key, key_len);
        sb_put(&b, ",");
        sb_b64(&b, "value", value ? value : "", value_len);
        if (lease) {
                sb_put(&b, ",");
                sb_i64(&b, "lease", lease);
        }
        sb_put(&b, "}");
        if ((err = etcd_call(e, "put", "/v3/kv/put", &b, false, &ans)))
                return err;
        err = bad_answer(e, "put", &ans, ks_etcd_json_header(ans.r.buf, ans.r.len, &rev));
        if (!err && revision)
                *revision = rev;
        resp_free(&ans.r);
        return err;
}

static ks_err_t etcd_delete_range(ks_kv_t *kv, const void *key, size_t key_len, const void *range_end,
                                  size_t range_end_len, int64_t *deleted, int64_t *revision)
{
        etcd_kv_t *e = (etcd_kv_t *)kv;
        ks_kv_op_t op = {.type = KS_KV_OP_DELETE,
                         .key = key,
                         .key_len = key_len,
                         .range_end = range_end,
                         .range_end_len = range_end_len};
        ks_kv_span_t s = {0};
        etcd_ans_t ans;
        sb_t b = {0};
        int64_t n, rev;
        ks_err_t err;

        if ((err = ks_kv_check_ops(&op, 1)))
                return err;
        ks_kv_span_make(&s, key, key_len, range_end, range_end_len);
        if (est_too_large(e, est_add(0, s.key_len, s.end_len, 0)))
                return KS_ERR__TOO_LARGE;
        sb_put(&b, "{");
        sb_span(&b, &s);
        sb_put(&b, "}");
        if ((err = etcd_call(e, "delete_range", "/v3/kv/deleterange", &b, false, &ans)))
                return err;
        err = bad_answer(e, "delete_range", &ans, ks_etcd_json_delete(ans.r.buf, ans.r.len, &n, &rev));
        if (!err) {
                if (deleted)
                        *deleted = n;
                if (revision)
                        *revision = rev;
        }
        resp_free(&ans.r);
        return err;
}

static void sb_cmp(sb_t *b, const ks_kv_cmp_t *c)
{
        static const char *const targets[] = {"VERSION", "CREATE", "MOD", "VALUE", "LEASE"};
        static const char *const fields[] = {"version", "create_revision", "mod_revision", "value", "lease"};
        static const char *const results[] = {"EQUAL", "NOT_EQUAL", "LESS", "GREATER"};

        sb_put(b, "{");
        sb_b64(b, "key", c->key, c->key_len);
        sb_put(b, ",\"target\":\"");
        sb_put(b, targets[c->target]);
        sb_put(b, "\",\"result\":\"");
        sb_put(b, results[c->op]);
        sb_put(b, "\",");
        if (c->target == KS_KV_CMP_VALUE)
                sb_b64(b, fields[c->target], c->value ? c->value : "", c->value_len);
        else
                sb_i64(b, fields[c->target], c->number);
        sb_put(b, "}");
}

static void sb_branch(sb_t *b, const char *name, const ks_kv_op_t *ops, size_t n)
{
        sb_put(b, ",\"");
        sb_put(b, name);
        sb_put(b, "\":[");
        for (size_t i = 0; i < n; i++) {
                sb_put(b, i ? ",{" : "{");
                sb_op(b, &ops[i]);
                sb_put(b, "}");
        }
        sb_put(b, "]");
}

static ks_err_t etcd_txn(ks_kv_t *kv, const ks_kv_cmp_t *cmps, size_t ncmps, const ks_kv_op_t *success, size_t nsuccess,
                         const ks_kv_op_t *failure, size_t nfailure, bool *succeeded, int64_t *revision)
{
        etcd_kv_t *e = (etcd_kv_t *)kv;
        etcd_ans_t ans;
        sb_t b = {0};
        size_t est = 0;
        bool ok;
        int64_t rev;
        ks_err_t err;

        if ((err = ks_kv_check_cmps(cmps, ncmps)) || (err = ks_kv_check_ops(success, nsuccess)) ||
            (err = ks_kv_check_ops(failure, nfailure)))
                return err;
        for (size_t i = 0; i < ncmps; i++)
                est = est_add(est, cmps[i].key_len, cmps[i].target == KS_KV_CMP_VALUE ? cmps[i].value_len : 0, 0);
        for (int br = 0; br < 2; br++) {
                const ks_kv_op_t *ops = br ? failure : success;
                size_t n = br ? nfailure : nsuccess;
                for (size_t i = 0; i < n; i++)
                        est = est_add(est, ops[i].key_len, ops[i].type == KS_KV_OP_PUT ? ops[i].value_len : 0,
                                      ops[i].type == KS_KV_OP_DELETE && ops[i].range_end ? ops[i].range_end_len : 0);
        }
        if (est_too_large(e, est))
                return KS_ERR__TOO_LARGE;

        sb_put(&b, "{\"compare\":[");
        for (size_t i = 0; i < ncmps; i++) {
                if (i)
                        sb_put(&b, ",");
                sb_cmp(&b, &cmps[i]);
        }
        sb_put(&b, "]");
        sb_branch(&b, "success", success, nsuccess);
        sb_branch(&b, "failure", failure, nfailure);
        sb_put(&b, "}");
        /* A txn that writes nothing in either branch is a read. */
        if ((err = etcd_call(e, "txn", "/v3/kv/txn", &b, nsuccess + nfailure == 0, &ans)))
                return err;
        err = bad_answer(e, "txn", &ans, ks_etcd_json_txn(ans.r.buf, ans.r.len, &ok, &rev));
        if (!err) {
                if (succeeded)
                        *succeeded = ok;
                if (revision)
                        *revision = rev;
        }
        resp_free(&ans.r);
        return err;
}

static ks_err_t etcd_lease_grant(ks_kv_t *kv, int64_t ttl_seconds, int64_t *lease_id)
{
        etcd_kv_t *e = (etcd_kv_t *)kv;
        etcd_ans_t ans;
        sb_t b = {0};
        char tmp[64];
        int64_t id, ttl;
        ks_err_t err;

        if (ttl_seconds < 1 || ttl_seconds > INT64_MAX / 4000 || !lease_id)
                return KS_ERR__INVALID_ARG;
        snprintf(tmp, sizeof(tmp), "{\"TTL\":%" PRId64 "}", ttl_seconds); /* "TTL": case matters */
        sb_put(&b, tmp);
        /* Sent again after an unknown outcome: a duplicate lease expires. */
        if ((err = etcd_call(e, "lease_grant", "/v3/lease/grant", &b, true, &ans)))
                return err;
        err = bad_answer(e, "lease_grant", &ans, ks_etcd_json_lease_grant(ans.r.buf, ans.r.len, &id, &ttl));
        if (!err)
                *lease_id = id;
        resp_free(&ans.r);
        return err;
}

static ks_err_t etcd_lease_keepalive(ks_kv_t *kv, int64_t lease_id, int64_t *ttl_remaining)
{
        etcd_kv_t *e = (etcd_kv_t *)kv;
        etcd_ans_t ans;
        ks_etcd_error_t ee;
        sb_t b = {0};
        int64_t ttl;
        ks_err_t err;

        sb_put(&b, "{");
        sb_i64(&b, "ID", lease_id);
        sb_put(&b, "}");
        /* With one endpoint there is nowhere else to go: wait as long as
         * for any request. */
        if ((err = etcd_call_timeout(e, "lease_keepalive", "/v3/lease/keepalive", &b, true,
                                     e->neps > 1 ? ETCD_KEEPALIVE_TIMEOUT_MS : 0, &ans)))
                return err;
        err = ks_etcd_json_keepalive(ans.r.buf, ans.r.len, &ttl, &ee);
        if (err == KS_ERR__NOT_FOUND)
                err = err_map("lease_keepalive", ans.ep, e, ans.status, &ee); /* an error inside the stream */
        else if (!err && ttl <= 0)
                err = KS_ERR__LEASE_LOST; /* expired or revoked */
        else
                err = bad_answer(e, "lease_keepalive", &ans, err);
        if (!err && ttl_remaining)
                *ttl_remaining = ttl;
        resp_free(&ans.r);
        return err;
}

static ks_err_t etcd_lease_revoke(ks_kv_t *kv, int64_t lease_id)
{
        etcd_kv_t *e = (etcd_kv_t *)kv;
        etcd_ans_t ans;
        sb_t b = {0};
        int64_t rev;
        ks_err_t err;

        sb_put(&b, "{");
        sb_i64(&b, "ID", lease_id);
        sb_put(&b, "}");
        /* Sent again after an unknown outcome (then "not found" = done). */
        if ((err = etcd_call(e, "lease_revoke", "/v3/lease/revoke", &b, true, &ans)))
                return err;
        err = bad_answer(e, "lease_revoke", &ans, ks_etcd_json_header(ans.r.buf, ans.r.len, &rev));
        resp_free(&ans.r);
        return err;
}

/* The current store revision (a linearizable count-only read of `key`). */
static ks_err_t current_revision(etcd_kv_t *e, const void *key, size_t key_len, int64_t *rev)
{
        etcd_ans_t ans;
        sb_t b = {0};
        ks_err_t err;

        sb_put(&b, "{");
        sb_b64(&b, "key", key, key_len);
        sb_put(&b, ",\"count_only\":true}");
        if ((err = etcd_call(e, "revision", "/v3/kv/range", &b, true, &ans)))
                return err;
        err = bad_answer(e, "revision", &ans, ks_etcd_json_header(ans.r.buf, ans.r.len, rev));
        resp_free(&ans.r);
        return err;
}

ks_err_t ks_kv_etcd_compact(ks_kv_t *kv)
{
        etcd_kv_t *e = (etcd_kv_t *)kv;
        etcd_ans_t ans;
        sb_t b = {0};
        int64_t rev;
        ks_err_t err;

        if (!kv || kv->ops != &etcd_ops)
                return KS_ERR__INVALID_ARG;
        if ((err = current_revision(e, "\0", 1, &rev)))
                return err;
        sb_put(&b, "{");
        sb_i64(&b, "revision", rev);
        sb_put(&b, "}");
        etcd_req_t req = {.op = "compact", .path = "/v3/kv/compaction", .idempotent = true};
        if (b.oom) {
                sb_free(&b);
                return KS_ERR__NOMEM;
        }
        req.body = b.p;
        req.len = b.len;
        err = etcd_exec(e, &req, &ans);
        sb_free(&b);
        if (err)
                return err;
        if (ans.status / 100 != 2) {
                ks_etcd_error_t ee;
                answer_error(ans.status, &ans.r, &ee);
                /* Already compacted there (by us or someone else): done. */
                err = msg_has(&ee, "required revision has been compacted")
                          ? KS_ERR_NONE
                          : err_map("compact", ans.ep, e, ans.status, &ee);
        }
        resp_free(&ans.r);
        if (!err)
                ks_log_info("etcd_compacted", "revision=%" PRId64, rev);
        return err;
}

/* ------------------------------------------------------------- watches */

typedef enum {
        WS_ENDED,     /* the server ended the stream, or the transfer failed */
        WS_CANCELLED, /* watch_cancel */
        WS_COMPACTED, /* etcd cancelled it: next_rev compacted */
        WS_AUTH,      /* the token was refused */
        WS_ERROR,     /* an error message, a cancel, a non-200 answer */
        WS_BAD,       /* an answer that cannot be decoded */
} ws_reason_t;

struct ks_kv_watch {
        ks_kv_watch_t *next; /* e->watches, under e->mu */
        etcd_kv_t *e;
        uint8_t *key, *end; /* owned; normalised (ks_kv_span_t) */
        size_t key_len, end_len;
        ks_kv_watch_cb *cb;
        void *opaque;
        pthread_t thread;
        int cancelled;       /* __atomic */
        bool self_cancelled; /* set by the watch thread itself (from its callback) */
        CURLM *multi;
        CURL *easy;

        /* Watch thread only. */
        int64_t next_rev;    /* first revision not yet delivered */
        int64_t compact_rev; /* > 0: report COMPACTED, then continue from now */
        int ep;
        ks_etcd_lines_t lines;
        long http_status; /* of the current stream; 0 = not known yet */
        char errbody[ETCD_WATCH_ERRBODY];
        size_t errlen;
        bool established;   /* the current stream got "created" */
        ws_reason_t reason; /* why the stream stopped (set by the callbacks) */
        bool reason_set;
        char detail[KS_ETCD_MSG_MAX];
};

static bool watch_cancelled(ks_kv_watch_t *w)
{
        return __atomic_load_n(&w->cancelled, __ATOMIC_ACQUIRE) != 0;
}

static void watch_stop(ks_kv_watch_t *w, ws_reason_t r, const char *detail)
{
        if (w->reason_set)
                return;
        w->reason = r;
        w->reason_set = true;
        snprintf(w->detail, sizeof(w->detail), "%s", detail ? detail : "");
}

/* Takes the store's callback turn; false (without it) when w was cancelled
 * meanwhile.  Watch thread. */
static bool cb_enter(etcd_kv_t *e, ks_kv_watch_t *w)
{
        pthread_mutex_lock(&e->mu);
        while (e->cb_busy && !watch_cancelled(w))
                pthread_cond_wait(&e->cb_cv, &e->mu);
        bool ok = !watch_cancelled(w);
        if (ok)
                e->cb_busy = true;
        pthread_mutex_unlock(&e->mu);
        return ok;
}

static void cb_exit(etcd_kv_t *e)
{
        pthread_mutex_lock(&e->mu);
        e->cb_busy = false;
        pthread_cond_broadcast(&e->cb_cv);
        pthread_mutex_unlock(&e->mu);
}

/* Delivers a decoded message's events: one call per revision, skipping what
 * was delivered already.  Watch thread. */
static void watch_deliver(ks_kv_watch_t *w, const ks_etcd_watch_msg_t *m)
{
        size_t i = 0;

        while (i < m->nevents) {
                int64_t rev = m->events[i].revision;
                size_t j = i + 1;
                while (j < m->nevents && m->events[j].revision == rev)
                        j++;
                if (rev >= w->next_rev) {
                        if (!cb_enter(w->e, w))
                                return;
                        w->cb(w->opaque, &m->events[i], j - i);
                        cb_exit(w->e);
                        w->next_rev = rev + 1;
                }
                i = j;
        }
}

/* One stream line.  Returns non-zero to stop the stream. */
static int watch_line(void *opaque, const char *line, size_t len)
{
        ks_kv_watch_t *w = opaque;
        ks_etcd_watch_msg_t m;
        ks_err_t err = ks_etcd_json_watch(line, len, &m);

        if (err) {
                ks_log_warn("etcd_watch_bad_message", "endpoint=%s len=%zu err=%s next_rev=%" PRId64, w->e->eps[w->ep],
                            len, ks_err_name(err), w->next_rev);
                watch_stop(w, WS_BAD, ks_err_name(err));
                return 1;
        }
        if (m.is_error) {
                watch_stop(w, err_is_auth_token(0, &m.error) ? WS_AUTH : WS_ERROR, m.error.message);
                return 1;
        }
        if (m.canceled) {
                if (m.compact_rev > 0) {
                        w->compact_rev = m.compact_rev;
                        watch_stop(w, WS_COMPACTED, NULL);
                } else {
                        ks_etcd_error_t ee = {.code = -1};
                        snprintf(ee.message, sizeof(ee.message), "%s", m.cancel_reason);
                        watch_stop(w, err_is_auth_token(0, &ee) ? WS_AUTH : WS_ERROR,
                                   m.cancel_reason[0] ? m.cancel_reason : "canceled by etcd");
                }
                ks_etcd_watch_msg_free(&m);
                return 1;
        }
        if (m.created)
                w->established = true;
        if (m.nevents) {
                watch_deliver(w, &m);
        } else if (!m.created && m.header_rev > 0 && m.header_rev + 1 > w->next_rev) {
                /* Progress notification: everything up to header_rev was sent. */
                w->next_rev = m.header_rev + 1;
        }
        ks_etcd_watch_msg_free(&m);
        if (watch_cancelled(w)) {
                watch_stop(w, WS_CANCELLED, NULL);
                return 1;
        }
        return 0;
}

static size_t on_watch_data(char *ptr, size_t size, size_t nmemb, void *ud)
{
        ks_kv_watch_t *w = ud;
        size_t n = size * nmemb;

        if (watch_cancelled(w)) {
                watch_stop(w, WS_CANCELLED, NULL);
                return 0;
        }
        if (w->http_status == 0)
                curl_easy_getinfo(w->easy, CURLINFO_RESPONSE_CODE, &w->http_status);
        if (w->http_status != 200) {
                /* An error answer: keep its start for the log. */
                size_t room = sizeof(w->errbody) - 1 - w->errlen;
                size_t take = n < room ? n : room;
                memcpy(w->errbody + w->errlen, ptr, take);
                w->errlen += take;
                w->errbody[w->errlen] = 0;
                return n;
        }
        int r = ks_etcd_lines_feed(&w->lines, ptr, n, watch_line, w);
        if (r < 0) {
                ks_log_warn("etcd_watch_bad_message", "endpoint=%s detail=\"line too long\"", w->e->eps[w->ep]);
                watch_stop(w, WS_BAD, "line too long");
        }
        return r ? 0 : n;
}

/* Waits ms, or less if cancelled.  Watch thread. */
static void watch_sleep(ks_kv_watch_t *w, int ms)
{
        int64_t until = ks_clock_mono_ms(ks_clock_system()) + ms;
        while (!watch_cancelled(w)) {
                int64_t left = until - ks_clock_mono_ms(ks_clock_system());
                if (left <= 0)
                        break;
                curl_multi_poll(w->multi, NULL, 0, (int)left, NULL);
        }
}

/* One stream from w->next_rev on eps[w->ep], until it stops.  *gen gets the
 * token generation used.  Watch thread. */
static ws_reason_t watch_stream(ks_kv_watch_t *w, uint64_t *gen)
{
        etcd_kv_t *e = w->e;
        struct curl_slist *hdrs = NULL;
        char curl_err[CURL_ERROR_SIZE] = "", *url = NULL, *token = NULL;
        sb_t b = {0};
        CURLcode cc = CURLE_OK;
        int running = 1;

        w->http_status = 0;
        w->errlen = 0;
        w->errbody[0] = 0;
        w->established = false;
        w->reason_set = false;
        w->detail[0] = 0;
        ks_etcd_lines_reset(&w->lines);

        ks_kv_span_t s = {.key = w->key, .key_len = w->key_len, .end = w->end, .end_len = w->end_len};
        sb_put(&b, "{\"create_request\":{");
        sb_span(&b, &s);
        sb_put(&b, ",");
        sb_i64(&b, "start_revision", w->next_rev);
        sb_put(&b, ",\"progress_notify\":true}}");
        token_get(e, &token, gen);
        if (asprintf(&url, "%s/v3/watch", e->eps[w->ep]) < 0)
                url = NULL;
        if (b.oom || !url || !(hdrs = headers_make(token))) {
                watch_stop(w, WS_ERROR, "out of memory");
                goto out;
        }
        curl_easy_reset(w->easy);
        common_opts(e, w->easy, url, hdrs, curl_err);
        curl_easy_setopt(w->easy, CURLOPT_TCP_KEEPIDLE, (long)ETCD_WATCH_KEEPIDLE_S);
        curl_easy_setopt(w->easy, CURLOPT_TCP_KEEPINTVL, (long)ETCD_WATCH_KEEPINTVL_S);
        curl_easy_setopt(w->easy, CURLOPT_POST, 1L);
        curl_easy_setopt(w->easy, CURLOPT_POSTFIELDS, b.p);
        curl_easy_setopt(w->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)b.len);
        curl_easy_setopt(w->easy, CURLOPT_WRITEFUNCTION, on_watch_data);
        curl_easy_setopt(w->easy, CURLOPT_WRITEDATA, w);
        if (curl_multi_add_handle(w->multi, w->easy) != CURLM_OK) {
                watch_stop(w, WS_ERROR, "curl_multi_add_handle failed");
                goto out;
        }
        while (!watch_cancelled(w)) {
                if (curl_multi_perform(w->multi, &running) != CURLM_OK || !running)
                        break;
                if (curl_multi_poll(w->multi, NULL, 0, ETCD_WATCH_POLL_MS, NULL) != CURLM_OK)
                        break;
        }
        CURLMsg *msg;
        int q;
        while ((msg = curl_multi_info_read(w->multi, &q)))
                if (msg->msg == CURLMSG_DONE)
                        cc = msg->data.result;
        curl_multi_remove_handle(w->multi, w->easy);
        if (watch_cancelled(w)) {
                watch_stop(w, WS_CANCELLED, NULL);
        } else if (w->http_status != 0 && w->http_status != 200) {
                ks_etcd_error_t ee;
                etcd_resp_t r = {.buf = w->errbody, .len = w->errlen};
                answer_error(w->http_status, &r, &ee);
                watch_stop(w, err_is_auth_token(w->http_status, &ee) ? WS_AUTH : WS_ERROR, ee.message);
        } else {
                watch_stop(w, WS_ENDED,
                           cc != CURLE_OK ? (curl_err[0] ? curl_err : curl_easy_strerror(cc)) : "stream ended");
        }
out:
        curl_easy_reset(w->easy);
        curl_slist_free_all(hdrs);
        free(url);
        free(token);
        sb_free(&b);
        return w->reason;
}

static void *watch_main(void *arg)
{
        ks_kv_watch_t *w = arg;
        etcd_kv_t *e = w->e;
        int backoff = 0;
        bool broken = false; /* a stream broke and none was re-established since */

        while (!watch_cancelled(w)) {
                if (w->compact_rev > 0) {
                        /* etcd dropped the history at next_rev: report it, go on from now. */
                        int64_t rev;
                        if (current_revision(e, w->key, w->key_len, &rev) != KS_ERR_NONE) {
                                backoff = backoff ? backoff * 2 : ETCD_WATCH_BACKOFF_MIN_MS;
                                if (backoff > ETCD_WATCH_BACKOFF_MAX_MS)
                                        backoff = ETCD_WATCH_BACKOFF_MAX_MS;
                                watch_sleep(w, backoff);
                                continue;
                        }
                        ks_kv_event_t ev = {.type = KS_KV_EV_COMPACTED, .revision = w->compact_rev};
                        ks_log_info("etcd_watch_compacted",
                                    "compact_revision=%" PRId64 " next_rev=%" PRId64 " resume_rev=%" PRId64,
                                    w->compact_rev, w->next_rev, rev + 1);
                        w->compact_rev = 0;
                        if (rev + 1 > w->next_rev)
                                w->next_rev = rev + 1;
                        if (!cb_enter(e, w))
                                break;
                        w->cb(w->opaque, &ev, 1);
                        cb_exit(e);
                        backoff = 0;
                        continue;
                }
                if (backoff)
                        watch_sleep(w, backoff);
                if (watch_cancelled(w))
                        break;
                uint64_t gen = 0;
                ws_reason_t r = watch_stream(w, &gen);
                if (r == WS_CANCELLED || watch_cancelled(w))
                        break;
                if (w->established && broken) {
                        ks_log_info("etcd_watch_resumed", "endpoint=%s next_rev=%" PRId64, e->eps[w->ep], w->next_rev);
                        broken = false;
                }
                if (r == WS_COMPACTED) {
                        backoff = 0;
                        continue;
                }
                if (r == WS_AUTH && e->username)
                        reauthenticate(e, w->ep, gen);
                if (w->established) {
                        if (!broken)
                                ks_log_warn("etcd_watch_broken", "endpoint=%s next_rev=%" PRId64 " reason=\"%s\"",
                                            e->eps[w->ep], w->next_rev, w->detail);
                        broken = true;
                        /* A stream that just ended: again at once (elsewhere);
                         * one that keeps failing (bad answers): slower. */
                        if (r == WS_ENDED || !backoff)
                                backoff = ETCD_WATCH_BACKOFF_MIN_MS;
                        else if ((backoff *= 2) > ETCD_WATCH_BACKOFF_MAX_MS)
                                backoff = ETCD_WATCH_BACKOFF_MAX_MS;
                } else {
                        ks_log_debug("etcd_watch_connect_failed", "endpoint=%s next_rev=%" PRId64 " reason=\"%s\"",
                                     e->eps[w->ep], w->next_rev, w->detail);
                        if (!broken && r != WS_ENDED)
                                ks_log_warn("etcd_watch_failed", "endpoint=%s next_rev=%" PRId64 " reason=\"%s\"",
                                            e->eps[w->ep], w->next_rev, w->detail);
                        broken = true;
                        backoff = backoff ? backoff * 2 : ETCD_WATCH_BACKOFF_MIN_MS;
                        if (backoff > ETCD_WATCH_BACKOFF_MAX_MS)
                                backoff = ETCD_WATCH_BACKOFF_MAX_MS;
                }
                w->ep = (w->ep + 1) % e->neps;
        }

        if (w->self_cancelled) {
                /* Cancelled from its own callback: nobody joins; clean up here. */
                ks_etcd_lines_free(&w->lines);
                curl_easy_cleanup(w->easy);
                curl_multi_cleanup(w->multi);
                free(w->key);
                free(w->end);
                free(w);
                pthread_mutex_lock(&e->mu);
                e->detached--;
                pthread_cond_broadcast(&e->cv);
                pthread_mutex_unlock(&e->mu);
        }
        return NULL;
}

static void watch_free(ks_kv_watch_t *w)
{
        ks_etcd_lines_free(&w->lines);
        if (w->easy)
                curl_easy_cleanup(w->easy);
        if (w->multi)
                curl_multi_cleanup(w->multi);
        free(w->key);
        free(w->end);
        free(w);
}

static ks_err_t etcd_watch(ks_kv_t *kv, const void *key, size_t key_len, const void *range_end, size_t range_end_len,
                           int64_t start_rev, ks_kv_watch_cb *cb, void *opaque, ks_kv_watch_t **out)
{
        etcd_kv_t *e = (etcd_kv_t *)kv;
        ks_kv_span_t s = {0};
        ks_kv_watch_t *w;
        ks_err_t err;

        if (!cb || !out || start_rev < 0)
                return KS_ERR__INVALID_ARG;
        if ((err = ks_kv_span_make(&s, key, key_len, range_end, range_end_len)))
                return err;
        if (!(w = calloc(1, sizeof(*w))))
                return KS_ERR__NOMEM;
        w->e = e;
        w->cb = cb;
        w->opaque = opaque;
        w->key_len = s.key_len;
        w->key = malloc(s.key_len);
        if (w->key)
                memcpy(w->key, s.key, s.key_len);
        if (s.end) {
                w->end = malloc(s.end_len + 1);
                if (w->end)
                        memcpy(w->end, s.end, s.end_len);
                w->end_len = s.end_len;
        }
        w->lines.max = ETCD_MAX_WATCH_LINE;
        w->multi = curl_multi_init();
        w->easy = curl_easy_init();
        if (!w->key || (s.end && !w->end) || !w->multi || !w->easy) {
                watch_free(w);
                return KS_ERR__NOMEM;
        }
        /* start_rev 0 = "from the next change": pin it now, so that a write
         * after this call returns is seen however late the stream connects. */
        if (start_rev == 0) {
                int64_t rev;
                if ((err = current_revision(e, s.key, s.key_len, &rev))) {
                        watch_free(w);
                        return err;
                }
                start_rev = rev + 1;
        }
        w->next_rev = start_rev;
        w->ep = __atomic_load_n(&e->cur_ep, __ATOMIC_RELAXED);

        pthread_mutex_lock(&e->mu);
        w->next = e->watches;
        e->watches = w;
        int rc = pthread_create(&w->thread, NULL, watch_main, w);
        if (rc != 0) {
                e->watches = w->next;
                pthread_mutex_unlock(&e->mu);
                ks_log_error("etcd_thread_failed", "thread=watch err=\"%s\"", strerror(rc));
                watch_free(w);
                return KS_ERR__NOMEM;
        }
        pthread_mutex_unlock(&e->mu);
        pthread_setname_np(w->thread, "ks-etcd-watch");
        *out = w;
        return KS_ERR_NONE;
}

static void etcd_watch_cancel(ks_kv_t *kv, ks_kv_watch_t *w)
{
        etcd_kv_t *e = (etcd_kv_t *)kv;

        if (!w)
                return;
        pthread_mutex_lock(&e->mu);
        for (ks_kv_watch_t **pp = &e->watches; *pp; pp = &(*pp)->next) {
                if (*pp == w) {
                        *pp = w->next;
                        break;
                }
        }
        __atomic_store_n(&w->cancelled, 1, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&e->cb_cv); /* it may wait for its turn */
        if (pthread_equal(pthread_self(), w->thread)) {
                /* From its own callback (kv.h forbids it; joining would
                 * deadlock): the thread frees itself when the callback returns. */
                w->self_cancelled = true;
                e->detached++;
                pthread_mutex_unlock(&e->mu);
                pthread_detach(w->thread);
                return;
        }
        pthread_mutex_unlock(&e->mu);
        curl_multi_wakeup(w->multi);
        pthread_join(w->thread, NULL);
        watch_free(w);
}

/* ------------------------------------------------------------- life cycle */

static void etcd_free(etcd_kv_t *e)
{
        for (int i = 0; i < e->nidle; i++)
                curl_easy_cleanup(e->idle[i]);
        for (int i = 0; i < e->neps; i++)
                free(e->eps[i]);
        free(e->eps);
        free(e->endpoints);
        free(e->username);
        if (e->password) {
                memset(e->password, 0, strlen(e->password));
                free(e->password);
        }
        free(e->token);
        pthread_mutex_destroy(&e->auth_mu);
        pthread_cond_destroy(&e->cb_cv);
        pthread_cond_destroy(&e->cv);
        pthread_mutex_destroy(&e->mu);
        free(e);
}

static void etcd_destroy(ks_kv_t *kv)
{
        etcd_kv_t *e = (etcd_kv_t *)kv;

        for (;;) {
                pthread_mutex_lock(&e->mu);
                ks_kv_watch_t *w = e->watches;
                pthread_mutex_unlock(&e->mu);
                if (!w)
                        break;
                etcd_watch_cancel(kv, w);
        }
        pthread_mutex_lock(&e->mu);
        while (e->detached > 0)
                pthread_cond_wait(&e->cv, &e->mu);
        pthread_mutex_unlock(&e->mu);
        etcd_free(e);
}

static const ks_kv_ops_t etcd_ops = {
    .name = "etcd",
    .range = etcd_range,
    .put = etcd_put,
    .delete_range = etcd_delete_range,
    .txn = etcd_txn,
    .lease_grant = etcd_lease_grant,
    .lease_keepalive = etcd_lease_keepalive,
    .lease_revoke = etcd_lease_revoke,
    .watch = etcd_watch,
    .watch_cancel = etcd_watch_cancel,
    .destroy = etcd_destroy,
};

/* Opening: authenticate (with a username) on the first endpoint that
 * answers, then one read through the normal failover path. */
static ks_err_t etcd_connect(etcd_kv_t *e, char *why, size_t whylen)
{
        etcd_ans_t ans;
        ks_err_t err = KS_ERR__UNAVAILABLE;

        if (e->username) {
                char last[512] = "";
                bool answered = false;
                for (int i = 0; i < e->neps && !answered; i++) {
                        err = authenticate(e, i, &answered, last, sizeof(last));
                        if (answered)
                                __atomic_store_n(&e->cur_ep, i, __ATOMIC_RELAXED);
                }
                if (err) {
                        if (answered)
                                snprintf(why, whylen, "%s", last);
                        else
                                snprintf(why, whylen, "no etcd endpoint answered (%s); last error: %s", e->endpoints,
                                         last);
                        return err;
                }
        }
        /* Any read will do; "\0" needs no particular permission to be told
         * "permission denied", which still proves authentication works. */
        etcd_req_t req = {
            .op = "open", .path = "/v3/kv/range", .body = "{\"key\":\"AA==\",\"count_only\":true}", .idempotent = true};
        req.len = strlen(req.body);
        if ((err = etcd_exec(e, &req, &ans))) {
                snprintf(why, whylen, "no etcd endpoint answered (%s)%s", e->endpoints,
                         err == KS_ERR__TIMEOUT ? ": the last one timed out" : "");
                return err;
        }
        if (ans.status / 100 == 2) {
                int64_t rev;
                err = ks_etcd_json_header(ans.r.buf, ans.r.len, &rev);
                if (err)
                        snprintf(why, whylen, "%s answered something that is not etcd's JSON gateway (HTTP %ld)",
                                 e->eps[ans.ep], ans.status);
                else
                        ks_log_info("etcd_open", "endpoints=\"%s\" endpoint=%s auth=%s revision=%" PRId64, e->endpoints,
                                    e->eps[ans.ep], e->username ? "yes" : "no", rev);
                resp_free(&ans.r);
                return err ? KS_ERR__IO : KS_ERR_NONE;
        }
        ks_etcd_error_t ee;
        answer_error(ans.status, &ans.r, &ee);
        resp_free(&ans.r);
        if (msg_has(&ee, "permission denied"))
                return KS_ERR_NONE;
        if (msg_has(&ee, "user name is empty")) {
                snprintf(why, whylen, "etcd at %s has authentication enabled: configure an etcd user name and password",
                         e->eps[ans.ep]);
                return KS_ERR__INVALID_ARG;
        }
        if (err_is_auth_token(ans.status, &ee)) {
                snprintf(why, whylen, "etcd at %s refused the authentication token: %s", e->eps[ans.ep], ee.message);
                return KS_ERR__INVALID_ARG;
        }
        if (err_is_unavailable(ans.status, &ee)) {
                snprintf(why, whylen, "etcd at %s is not available: %s", e->eps[ans.ep], ee.message);
                return err_is_timeout(&ee) ? KS_ERR__TIMEOUT : KS_ERR__UNAVAILABLE;
        }
        snprintf(why, whylen, "etcd at %s answered HTTP %ld: %s", e->eps[ans.ep], ans.status, ee.message);
        return KS_ERR__IO;
}

ks_err_t ks_kv_etcd_open(const ks_kv_etcd_config_t *cfg, char *errbuf, size_t errlen, ks_kv_t **out)
{
        char why[1024] = "";
        etcd_kv_t *e = NULL;
        ks_err_t err;

        if (out)
                *out = NULL;
        if (errbuf && errlen)
                errbuf[0] = 0;
        if (!cfg || !out) {
                snprintf(why, sizeof(why), "no configuration");
                err = KS_ERR__INVALID_ARG;
                goto fail;
        }
        if (cfg->request_timeout_ms < 0 || cfg->connect_timeout_ms < 0 || cfg->request_timeout_ms > INT32_MAX ||
            cfg->connect_timeout_ms > INT32_MAX) {
                snprintf(why, sizeof(why), "etcd timeouts must be between 0 (default) and %d ms", INT32_MAX);
                err = KS_ERR__INVALID_ARG;
                goto fail;
        }
        bool auth = cfg->username && cfg->username[0];
        if (!auth && cfg->password && cfg->password[0]) {
                snprintf(why, sizeof(why), "an etcd password is set without a user name");
                err = KS_ERR__INVALID_ARG;
                goto fail;
        }
        pthread_once(&curl_once, curl_init_once);
        if (curl_init_rc != CURLE_OK) {
                snprintf(why, sizeof(why), "libcurl initialisation failed: %s", curl_easy_strerror(curl_init_rc));
                err = KS_ERR__IO;
                goto fail;
        }
        if (!(e = calloc(1, sizeof(*e))) || !(e->eps = calloc(ETCD_MAX_ENDPOINTS, sizeof(*e->eps)))) {
                free(e);
                e = NULL;
                err = KS_ERR__NOMEM;
                snprintf(why, sizeof(why), "out of memory");
                goto fail;
        }
        e->base.ops = &etcd_ops;
        pthread_mutex_init(&e->mu, NULL);
        pthread_mutex_init(&e->auth_mu, NULL);
        pthread_cond_init(&e->cv, NULL);
        pthread_cond_init(&e->cb_cv, NULL);
        e->req_timeout_ms = cfg->request_timeout_ms ? cfg->request_timeout_ms : ETCD_DEFAULT_REQUEST_TIMEOUT_MS;
        e->conn_timeout_ms = cfg->connect_timeout_ms ? cfg->connect_timeout_ms : ETCD_DEFAULT_CONNECT_TIMEOUT_MS;
        if ((err = endpoints_parse(e, cfg->endpoints, why, sizeof(why))))
                goto fail;
        e->endpoints = strdup(cfg->endpoints);
        if (auth) {
                e->username = strdup(cfg->username);
                e->password = strdup(cfg->password ? cfg->password : "");
        }
        if (!e->endpoints || (auth && (!e->username || !e->password))) {
                err = KS_ERR__NOMEM;
                snprintf(why, sizeof(why), "out of memory");
                goto fail;
        }
        if ((err = etcd_connect(e, why, sizeof(why))))
                goto fail;
        *out = &e->base;
        return KS_ERR_NONE;

fail:
        ks_log_error("etcd_open_failed", "endpoints=\"%s\" err=%s detail=\"%s\"",
                     cfg && cfg->endpoints ? cfg->endpoints : "", ks_err_name(err), why);
        if (errbuf && errlen)
                snprintf(errbuf, errlen, "%s", why);
        if (e)
                etcd_free(e);
        return err;
}
