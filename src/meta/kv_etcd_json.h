/*
 * kv_etcd_json.h — private to kv_etcd.c, its unit tests and its fuzz target
 * (tests/fuzz/fuzz_etcd_json.c): decoding etcd's JSON gateway answers into
 * kv.h structures, and the helpers around it (base64, the watch stream's line
 * splitter).
 *
 * Every decoder takes an untrusted buffer (not NUL-terminated, any bytes),
 * never reads outside it, and returns KS_ERR__PARSE for anything that is not
 * the expected shape: not one JSON object (trailing whitespace allowed),
 * wrong field types, bad base64, int64 strings that do not parse, negative
 * revisions.  Absent fields take their protobuf default (0, false, empty), as
 * the gateway omits them.  On error the outputs hold nothing to free.
 */
#ifndef KS_META_KV_ETCD_JSON_H
#define KS_META_KV_ETCD_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "meta/kv.h"

/* Longest message kept from etcd (error texts, cancel reasons). */
#define KS_ETCD_MSG_MAX 256

/* An error answer: unary {"error":"..","message":"..","code":N} or, inside a
 * stream, {"error":{"grpc_code":N,"http_code":..,"message":"..",..}}. */
typedef struct ks_etcd_error {
        int code;                      /* gRPC status code; -1 if absent */
        char message[KS_ETCD_MSG_MAX]; /* printable, no double quotes */
} ks_etcd_error_t;

/* 0 and *out filled if buf is an error answer, KS_ERR__PARSE otherwise. */
ks_err_t ks_etcd_json_error(const char *buf, size_t len, ks_etcd_error_t *out);

/* Any unary answer with a header (put, compaction, lease revoke): its
 * header.revision. */
ks_err_t ks_etcd_json_header(const char *buf, size_t len, int64_t *revision);

/* A RangeResponse: every kv appended to *out (ks_kv_result_add: keys and
 * values NUL-terminated, in etcd's order), out->revision = header.revision.
 * *out is initialised here; freed here on error. */
ks_err_t ks_etcd_json_range(const char *buf, size_t len, ks_kv_result_t *out);

/* A DeleteRangeResponse. */
ks_err_t ks_etcd_json_delete(const char *buf, size_t len, int64_t *deleted, int64_t *revision);

/* A TxnResponse. */
ks_err_t ks_etcd_json_txn(const char *buf, size_t len, bool *succeeded, int64_t *revision);

/* A LeaseGrantResponse (a non-empty "error" field is KS_ERR__PARSE). */
ks_err_t ks_etcd_json_lease_grant(const char *buf, size_t len, int64_t *id, int64_t *ttl);

/* A LeaseKeepAlive stream answer {"result":{..}}: *ttl is 0 when the lease
 * no longer exists.  An {"error":{..}} answer fills *err (if non-NULL) and
 * returns KS_ERR__NOT_FOUND. */
ks_err_t ks_etcd_json_keepalive(const char *buf, size_t len, int64_t *ttl, ks_etcd_error_t *err);

/* An AuthenticateResponse: *token is malloc'd (caller frees). */
ks_err_t ks_etcd_json_auth(const char *buf, size_t len, char **token);

/* One line of the watch stream. */
typedef struct ks_etcd_watch_msg {
        bool is_error; /* {"error":{..}}: only `error` is set */
        ks_etcd_error_t error;
        bool created, canceled;
        int64_t header_rev;  /* 0 if absent */
        int64_t compact_rev; /* > 0: canceled because start < compact_rev */
        char cancel_reason[KS_ETCD_MSG_MAX];
        ks_kv_event_t *events; /* owned (ks_etcd_watch_msg_free), revision order */
        size_t nevents;
} ks_etcd_watch_msg_t;

/* Decodes one watch line.  Events carry revision = kv.mod_revision; PUT
 * events everything, DELETE events key and mod_rev only; keys and values are
 * NUL-terminated.  Events whose revisions decrease are KS_ERR__PARSE. */
ks_err_t ks_etcd_json_watch(const char *buf, size_t len, ks_etcd_watch_msg_t *out);
void ks_etcd_watch_msg_free(ks_etcd_watch_msg_t *m);

/* Base64 (standard alphabet, padded) of n bytes into out, which holds at
 * least KS_ETCD_B64_LEN(n) + 1 bytes; NUL-terminates, returns the length. */
#define KS_ETCD_B64_LEN(n) ((((n) + 2) / 3) * 4)
size_t ks_etcd_b64_encode(const void *in, size_t n, char *out);

/* Decodes base64 (standard or URL alphabet, padding optional) into a malloc'd
 * NUL-terminated buffer.  KS_ERR__PARSE on any other byte or a bad length. */
ks_err_t ks_etcd_b64_decode(const char *in, size_t n, uint8_t **out, size_t *outlen);

/* Splits a byte stream into '\n'-terminated lines (a trailing '\r' dropped,
 * empty lines skipped), whatever the chunking.  `max` bounds one line. */
typedef struct ks_etcd_lines {
        char *buf; /* the incomplete last line */
        size_t len, cap, max;
} ks_etcd_lines_t;

/* Called per complete line; a non-zero return stops feeding and is returned
 * by ks_etcd_lines_feed. */
typedef int(ks_etcd_line_fn)(void *opaque, const char *line, size_t len);

/* Feeds n bytes.  Returns 0, fn's non-zero value, or -1 when a line grows
 * past max or memory runs out (the partial line is dropped). */
int ks_etcd_lines_feed(ks_etcd_lines_t *l, const char *data, size_t n, ks_etcd_line_fn *fn, void *opaque);
void ks_etcd_lines_reset(ks_etcd_lines_t *l); /* drops a partial line, keeps the buffer */
void ks_etcd_lines_free(ks_etcd_lines_t *l);

#endif
