/*
 * sigv4.h — AWS Signature Version 4 (header-based), as a pure module.
 *
 * The S3 backend (objstore_s3.c) builds a request, then asks ks_sigv4_sign()
 * for the headers that authenticate it.  Nothing here does I/O or reads the
 * clock: the caller passes the timestamp, so the same inputs always give the
 * same signature (tests/unit/test_sigv4.c checks known answers computed by
 * botocore, see tests/tools/sigv4_expected.py).
 *
 * What is signed (AWS "Create a canonical request"):
 *
 *   METHOD \n canonical URI \n canonical query \n canonical headers \n
 *   signed headers \n payload hash
 *
 * - The canonical URI is taken as given: S3 does not normalise paths, so the
 *   caller passes the exact path it sends, already URI-encoded (build it with
 *   ks_sigv4_uri_encode(..., keep_slash = 1)).
 * - The canonical query string is taken as given; build it with
 *   ks_sigv4_query_build(), which encodes and sorts, and send that very
 *   string on the wire (so what is signed is what is sent).
 * - Headers: the caller's headers (must include `host`, exactly as sent)
 *   plus x-amz-date, x-amz-content-sha256 and, with a session token,
 *   x-amz-security-token, which the signer adds itself.  Names are
 *   lower-cased, values trimmed with inner whitespace runs collapsed to one
 *   space, repeated names joined with ',' in the order given, sorted by name.
 *
 * Threads: every function is reentrant (no shared state).
 * Errors: KS_ERR__INVALID_ARG for inputs that cannot be signed (missing
 * field, bad timestamp, header value with CR/LF, the caller passing one of
 * the headers the signer owns), KS_ERR__NOMEM.
 */
#ifndef KS_STORAGE_SIGV4_H
#define KS_STORAGE_SIGV4_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "util/err.h"

/* Lower-case hex SHA-256 of the empty string (bodies of GET/HEAD/DELETE). */
#define KS_SIGV4_EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define KS_SIGV4_UNSIGNED_PAYLOAD "UNSIGNED-PAYLOAD"

/* A header name/value pair (borrowed strings). */
typedef struct ks_sigv4_header {
        const char *name;
        const char *value;
} ks_sigv4_header_t;

/* A query parameter before encoding (borrowed strings; value "" allowed). */
typedef struct ks_sigv4_param {
        const char *name;
        const char *value;
} ks_sigv4_param_t;

/* Everything a signature depends on.  All strings are borrowed. */
typedef struct ks_sigv4_input {
        const char *method;               /* "GET", "PUT", ... (sent as given) */
        const char *path;                 /* canonical URI, URI-encoded, starts with '/' */
        const char *query;                /* canonical query string; NULL or "" = none */
        const ks_sigv4_header_t *headers; /* headers to sign; must contain "host" */
        size_t nheaders;
        const char *payload_hash; /* lower-case hex SHA-256 of the body, or UNSIGNED-PAYLOAD */
        const char *region;       /* "us-east-1" */
        const char *service;      /* "s3" */
        const char *access_key;
        const char *secret_key;
        const char *session_token; /* NULL or "" = none */
        const char *amz_date;      /* ISO 8601 basic UTC: "20260102T030405Z" */
} ks_sigv4_input_t;

/* What ks_sigv4_sign() produces.  Owned by the caller: release with
 * ks_sigv4_output_free(). */
typedef struct ks_sigv4_output {
        /* Headers the caller must add to the request, in this order:
         * X-Amz-Date, X-Amz-Content-SHA256, [X-Amz-Security-Token],
         * Authorization.  `name` is static; `value` is owned by this struct. */
        ks_sigv4_header_t add[4];
        int nadd;
        char *canonical_request; /* for tests and debug logs */
        char *string_to_sign;
        char *signed_headers; /* "host;range;x-amz-content-sha256;x-amz-date" */
        char signature[65];   /* lower-case hex */
} ks_sigv4_output_t;

/* Signs `in`.  On success fills *out (caller frees); on failure *out is
 * left empty (safe to free). */
ks_err_t ks_sigv4_sign(const ks_sigv4_input_t *in, ks_sigv4_output_t *out);

void ks_sigv4_output_free(ks_sigv4_output_t *out);

/* --- helpers ------------------------------------------------------------- */

/* Lower-case hex SHA-256 of a buffer / of the concatenation of iovecs. */
void ks_sigv4_sha256_hex(const void *data, size_t len, char out[65]);
ks_err_t ks_sigv4_sha256_iov_hex(const struct iovec *iov, int iovcnt, char out[65]);

/* AWS URI encoding: every byte except A-Z a-z 0-9 - _ . ~ (and '/' when
 * keep_slash) becomes %XX with upper-case hex.  Writes at most outsz bytes
 * including the NUL (truncating) and returns the length the full encoding
 * needs, without the NUL (snprintf-style); 3 * len + 1 bytes always fit. */
size_t ks_sigv4_uri_encode(const char *s, size_t len, int keep_slash, char *out, size_t outsz);

/* Builds the canonical query string of n parameters: names and values
 * URI-encoded (slashes too), sorted by encoded name then value, joined as
 * "a=1&b=2".  *out is malloc'ed ("" when n == 0); caller frees. */
ks_err_t ks_sigv4_query_build(const ks_sigv4_param_t *params, size_t n, char **out);

/* Formats Unix-epoch milliseconds as "YYYYMMDDTHHMMSSZ". */
void ks_sigv4_amz_date(int64_t wall_ms, char out[17]);

#endif
