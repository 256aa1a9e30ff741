/*
 * objstore_s3.c — S3 (or any S3-compatible store) over libcurl.
 *
 * Requests: PUT object, GET object (with Range), ListObjectsV2 (prefix,
 * continuation tokens), DELETE object, HEAD bucket (check()).  Each request
 * is signed with SigV4 (sigv4.h) including the real payload hash, with a
 * session token when configured.  Addressing is path-style
 * (<endpoint>/<bucket>/<key>) or virtual-hosted (<bucket>.<host>/<key>).
 *
 * Connections: a pool of CURL easy handles, at most `concurrency` in use at
 * once; a caller beyond that blocks until a handle is free.  Handles are
 * reused, and each keeps its keep-alive connection, so steady traffic does
 * not reconnect.
 *
 * Retries: see objstore.h.  A request that must be retried gives its pool
 * slot back while it sleeps.
 *
 * Untrusted input: response bodies (XML) are parsed by a small bounds-checked
 * scanner (xml_parse) that refuses DTDs, caps nesting, names and text, and
 * decodes only XML's predefined and numeric entities; response sizes are
 * capped per request kind.
 *
 * Threads and locks: `mu` protects the pool (idle handles, in-flight count)
 * and is never held across network I/O; everything else in the store is
 * immutable after creation.  A request's state lives on its caller's stack.
 */
#include "storage/objstore.h"
#include "storage/objstore_s3_xml.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "storage/sigv4.h"
#include "util/clock.h"
#include "util/log.h"

#define S3_BACKOFF_BASE_MS 100
#define S3_BACKOFF_CAP_MS 5000
#define S3_MAX_ERROR_BODY (256 * 1024)      /* error documents */
#define S3_MAX_LIST_BODY (64 * 1024 * 1024) /* one ListObjectsV2 page */
#define S3_MAX_PREALLOC (256 * 1024 * 1024) /* trust Content-Length up to this */
#define S3_MAX_TOKEN 4096                   /* continuation token */
#define S3_MAX_PAGES 1000000

typedef struct s3_store {
        ks_objstore_t base;
        char *bucket, *region, *access_key, *secret_key, *session_token; /* owned */
        int concurrency, timeout_ms, max_retries;
        char *origin;      /* "http://127.0.0.1:9000", "https://b.s3.r.amazonaws.com" */
        char *host_header; /* Host as sent and signed */
        char *path_prefix; /* "/<bucket>" (path-style) or "" */
        char *endpoint;    /* what the operator configured (or the AWS default), for messages */

        pthread_mutex_t mu;
        pthread_cond_t cv;
        CURL **idle;  /* [concurrency]; under mu */
        int nidle;    /* under mu */
        int inflight; /* under mu */
} s3_store_t;

/* One HTTP exchange: what to send and what came back. */
typedef struct s3_call {
        /* Request. */
        const char *op;               /* "put", "get", "list", "del", "check": for logs */
        const char *subj_name, *subj; /* for logs: "key" or "prefix", and its value */
        const char *method;           /* "GET", "PUT", "DELETE", "HEAD" */
        const char *key;              /* object key, or NULL for the bucket */
        const char *query;            /* canonical query string, "" for none */
        const struct iovec *iov;
        int iovcnt;
        size_t body_len;
        const char *payload_hash;
        char range[64]; /* "" = none */
        size_t max_body;

        /* Upload cursor. */
        int up_i;
        size_t up_off, up_pos;

        /* Response. */
        long status;
        CURLcode cc;
        char curl_err[CURL_ERROR_SIZE];
        uint8_t *body;
        size_t body_len_got, body_cap;
        int body_too_large;
        char request_id[128];
        char bucket_region[64];
        char s3_code[64];
        char s3_msg[256];
        int attempts;
        int timed_out;              /* the last transport failure was a timeout */
        long hdr_status;            /* status line seen by the header callback */
        int64_t cr_start, cr_total; /* Content-Range "bytes S-E/T" (-1: absent/unknown) */
        int range_empty;            /* 206 whose range starts at or past the object's end */
} s3_call_t;

/* ------------------------------------------------------------ small helpers */

static char *dup_or_null(const char *s)
{
        return s ? strdup(s) : NULL;
}

static int nonempty(const char *s)
{
        return s && s[0];
}

/* ------------------------------------------------------------ endpoint */

ks_err_t ks_s3_endpoint_parse(const char *url, ks_s3_endpoint_t *out, char *why, size_t whylen)
{
        const char *p, *host, *host_end, *rest;
        char tmp[16];

        memset(out, 0, sizeof(*out));
        if (!url || !url[0]) {
                snprintf(why ? why : tmp, why ? whylen : sizeof(tmp), "is empty");
                return KS_ERR__INVALID_ARG;
        }
        if (!strncasecmp(url, "http://", 7)) {
                p = url + 7;
        } else if (!strncasecmp(url, "https://", 8)) {
                p = url + 8;
                out->https = 1;
        } else {
                if (why)
                        snprintf(why, whylen, "must start with http:// or https://");
                return KS_ERR__INVALID_ARG;
        }
        host = p;
        if (*p == '[') {
                host_end = strchr(p, ']');
                if (!host_end || host_end == p + 1) {
                        if (why)
                                snprintf(why, whylen, "has an unterminated [IPv6] host");
                        return KS_ERR__INVALID_ARG;
                }
                for (const char *q = p + 1; q < host_end; q++)
                        if (!isxdigit((unsigned char)*q) && *q != ':' && *q != '.') {
                                if (why)
                                        snprintf(why, whylen, "has an invalid IPv6 address");
                                return KS_ERR__INVALID_ARG;
                        }
                host++;
                rest = host_end + 1;
                out->is_ip = 1;
        } else {
                while (*p && *p != ':' && *p != '/' && *p != '?' && *p != '#' && *p != '@')
                        p++;
                host_end = rest = p;
                if (*p == '@') {
                        if (why)
                                snprintf(why, whylen,
                                         "must not contain user info (credentials go in "
                                         "KAFSCALE_S3_ACCESS_KEY/KAFSCALE_S3_SECRET_KEY)");
                        return KS_ERR__INVALID_ARG;
                }
                int dots = 0, digits_only = 1;
                for (const char *q = host; q < host_end; q++) {
                        unsigned char c = (unsigned char)*q;
                        if (c == '.')
                                dots++;
                        else if (!isdigit(c))
                                digits_only = 0;
                        if (!isalnum(c) && c != '.' && c != '-' && c != '_') {
                                if (why)
                                        snprintf(why, whylen, "has an invalid host name");
                                return KS_ERR__INVALID_ARG;
                        }
                }
                out->is_ip = digits_only && dots == 3;
        }
        size_t hl = (size_t)(host_end - host);
        if (hl == 0 || hl >= sizeof(out->host)) {
                if (why)
                        snprintf(why, whylen, "has no host");
                return KS_ERR__INVALID_ARG;
        }
        for (size_t i = 0; i < hl; i++)
                out->host[i] = (char)tolower((unsigned char)host[i]);
        out->host[hl] = '\0';
        if (*rest == ':') {
                char *end;
                errno = 0;
                long port = strtol(rest + 1, &end, 10);
                if (end == rest + 1 || errno || port < 1 || port > 65535 || !isdigit((unsigned char)rest[1])) {
                        if (why)
                                snprintf(why, whylen, "has an invalid port (expected 1-65535)");
                        return KS_ERR__INVALID_ARG;
                }
                out->port = (int)port;
                rest = end;
        }
        if (rest[0] == '/' && rest[1] == '\0')
                rest++;
        if (*rest) {
                if (why)
                        snprintf(why, whylen, "must be scheme://host[:port] only (no path, query or fragment)");
                return KS_ERR__INVALID_ARG;
        }
        return KS_ERR_NONE;
}

/* ------------------------------------------------------------ XML scanner */

#define XML_MAX_DEPTH 16
#define XML_MAX_NAME 128
#define XML_MAX_TEXT (64 * 1024)

/* Called at each element start (end = 0, text NULL) and end (end = 1; text
 * is the element's decoded text when it had no child elements, else NULL).
 * depth is 1 for the root.  Returns non-zero to stop with an error. */
typedef int (*xml_fn)(void *ctx, int depth, const char *name, size_t nlen, int end, const char *text, size_t tlen);

typedef struct xml_text {
        char *p;
        size_t len, cap;
} xml_text_t;

static void text_reset(xml_text_t *t)
{
        t->len = 0;
        if (t->p)
                t->p[0] = '\0';
}

static int text_add(xml_text_t *t, const char *s, size_t n)
{
        if (t->len + n > XML_MAX_TEXT)
                return -1;
        if (t->len + n + 1 > t->cap) {
                size_t ncap = t->cap ? t->cap : 256;
                while (ncap < t->len + n + 1)
                        ncap *= 2;
                char *np = realloc(t->p, ncap);
                if (!np)
                        return -1;
                t->p = np;
                t->cap = ncap;
        }
        memcpy(t->p + t->len, s, n);
        t->len += n;
        t->p[t->len] = '\0';
        return 0;
}

/* Appends code point cp as UTF-8. */
static int text_add_cp(xml_text_t *t, uint32_t cp)
{
        char u[4];
        size_t n;
        if (cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
                return -1;
        if (cp < 0x80) {
                u[0] = (char)cp;
                n = 1;
        } else if (cp < 0x800) {
                u[0] = (char)(0xC0 | (cp >> 6));
                u[1] = (char)(0x80 | (cp & 0x3F));
                n = 2;
        } else if (cp < 0x10000) {
                u[0] = (char)(0xE0 | (cp >> 12));
                u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
                u[2] = (char)(0x80 | (cp & 0x3F));
                n = 3;
        } else {
                u[0] = (char)(0xF0 | (cp >> 18));
                u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
                u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
                u[3] = (char)(0x80 | (cp & 0x3F));
                n = 4;
        }
        return text_add(t, u, n);
}

/* Decodes character data s[0..n) (entities included) into t. */
static int text_decode(xml_text_t *t, const char *s, size_t n)
{
        size_t i = 0;
        while (i < n) {
                const char *amp = memchr(s + i, '&', n - i);
                size_t run = amp ? (size_t)(amp - (s + i)) : n - i;
                if (run && text_add(t, s + i, run))
                        return -1;
                i += run;
                if (!amp)
                        break;
                const char *semi = memchr(s + i, ';', n - i < 12 ? n - i : 12);
                if (!semi)
                        return -1;
                const char *ent = s + i + 1;
                size_t el = (size_t)(semi - ent);
                static const struct {
                        const char *name;
                        char c;
                } named[] = {{"lt", '<'}, {"gt", '>'}, {"amp", '&'}, {"quot", '"'}, {"apos", '\''}};
                int ok = 0;
                for (size_t k = 0; k < sizeof(named) / sizeof(named[0]); k++) {
                        if (el == strlen(named[k].name) && !memcmp(ent, named[k].name, el)) {
                                if (text_add(t, &named[k].c, 1))
                                        return -1;
                                ok = 1;
                                break;
                        }
                }
                if (!ok) {
                        if (el < 2 || ent[0] != '#')
                                return -1;
                        uint32_t cp = 0;
                        int hex = ent[1] == 'x';
                        size_t d0 = hex ? 2 : 1;
                        if (d0 >= el || el - d0 > 7)
                                return -1;
                        for (size_t k = d0; k < el; k++) {
                                unsigned char c = (unsigned char)ent[k];
                                if (hex && isxdigit(c))
                                        cp = cp * 16 + (uint32_t)(isdigit(c) ? c - '0' : (tolower(c) - 'a' + 10));
                                else if (!hex && isdigit(c))
                                        cp = cp * 10 + (uint32_t)(c - '0');
                                else
                                        return -1;
                        }
                        if (text_add_cp(t, cp))
                                return -1;
                }
                i = (size_t)(semi - s) + 1;
        }
        return 0;
}

static const char *find_seq(const char *p, const char *end, const char *seq)
{
        size_t n = strlen(seq);
        while ((size_t)(end - p) >= n) {
                if (!memcmp(p, seq, n))
                        return p;
                p++;
        }
        return NULL;
}

static int xml_space(char c)
{
        return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static int xml_name_char(char c)
{
        return !xml_space(c) && c != '/' && c != '>' && c != '<' && c != '=' && c != '"' && c != '\'' && c != '&' &&
               c != '?' && c != '!';
}

/* Parses one XML document.  KS_ERR_NONE, KS_ERR__PARSE (malformed or over a
 * limit, or the callback refused) or KS_ERR__NOMEM-free: text growth
 * failures count as PARSE since they only happen past the limits. */
static ks_err_t xml_parse(const char *buf, size_t len, xml_fn fn, void *ctx)
{
        const char *p = buf, *end = buf + len;
        const char *names[XML_MAX_DEPTH];
        size_t nlens[XML_MAX_DEPTH];
        int had_child[XML_MAX_DEPTH + 1];
        int depth = 0, root_seen = 0;
        xml_text_t t = {0};
        ks_err_t err = KS_ERR__PARSE;

        had_child[0] = 0;
        while (p < end) {
                if (*p != '<') {
                        const char *lt = memchr(p, '<', (size_t)(end - p));
                        const char *stop = lt ? lt : end;
                        if (depth == 0) {
                                for (; p < stop; p++)
                                        if (!xml_space(*p))
                                                goto out;
                        } else {
                                if (text_decode(&t, p, (size_t)(stop - p)))
                                        goto out;
                                p = stop;
                        }
                        continue;
                }
                size_t left = (size_t)(end - p);
                if (left >= 2 && p[1] == '?') {
                        const char *q = find_seq(p + 2, end, "?>");
                        if (!q)
                                goto out;
                        p = q + 2;
                } else if (left >= 4 && !memcmp(p, "<!--", 4)) {
                        const char *q = find_seq(p + 4, end, "-->");
                        if (!q)
                                goto out;
                        p = q + 3;
                } else if (left >= 9 && !memcmp(p, "<![CDATA[", 9)) {
                        const char *q = find_seq(p + 9, end, "]]>");
                        if (!q || depth == 0 || text_add(&t, p + 9, (size_t)(q - (p + 9))))
                                goto out;
                        p = q + 3;
                } else if (left >= 2 && p[1] == '!') {
                        goto out; /* DOCTYPE and friends: never from S3, refused */
                } else if (left >= 2 && p[1] == '/') {
                        const char *n = p + 2, *q = n;
                        while (q < end && xml_name_char(*q))
                                q++;
                        size_t nl = (size_t)(q - n);
                        while (q < end && xml_space(*q))
                                q++;
                        if (depth == 0 || q >= end || *q != '>' || nl != nlens[depth - 1] ||
                            memcmp(n, names[depth - 1], nl) != 0)
                                goto out;
                        int leaf = !had_child[depth];
                        if (fn(ctx, depth, n, nl, 1, leaf ? (t.p ? t.p : "") : NULL, leaf ? t.len : 0))
                                goto out;
                        depth--;
                        text_reset(&t);
                        p = q + 1;
                } else {
                        const char *n = p + 1, *q = n;
                        while (q < end && xml_name_char(*q))
                                q++;
                        size_t nl = (size_t)(q - n);
                        if (nl == 0 || nl > XML_MAX_NAME || depth >= XML_MAX_DEPTH || (depth == 0 && root_seen))
                                goto out;
                        /* Attributes: name = "value" | 'value', skipped. */
                        int empty = 0;
                        for (;;) {
                                while (q < end && xml_space(*q))
                                        q++;
                                if (q >= end)
                                        goto out;
                                if (*q == '>') {
                                        q++;
                                        break;
                                }
                                if (*q == '/') {
                                        if (q + 1 >= end || q[1] != '>')
                                                goto out;
                                        q += 2;
                                        empty = 1;
                                        break;
                                }
                                const char *an = q;
                                while (q < end && xml_name_char(*q))
                                        q++;
                                if (q == an)
                                        goto out;
                                while (q < end && xml_space(*q))
                                        q++;
                                if (q >= end || *q != '=')
                                        goto out;
                                q++;
                                while (q < end && xml_space(*q))
                                        q++;
                                if (q >= end || (*q != '"' && *q != '\''))
                                        goto out;
                                char quote = *q++;
                                while (q < end && *q != quote && *q != '<')
                                        q++;
                                if (q >= end || *q != quote)
                                        goto out;
                                q++;
                        }
                        root_seen = 1;
                        had_child[depth] = 1;
                        names[depth] = n;
                        nlens[depth] = nl;
                        depth++;
                        had_child[depth] = 0;
                        text_reset(&t);
                        if (fn(ctx, depth, n, nl, 0, NULL, 0))
                                goto out;
                        if (empty) {
                                if (fn(ctx, depth, n, nl, 1, "", 0))
                                        goto out;
                                depth--;
                        }
                        p = q;
                }
        }
        if (depth == 0 && root_seen)
                err = KS_ERR_NONE;
out:
        free(t.p);
        return err;
}

static int name_is(const char *name, size_t nlen, const char *want)
{
        return nlen == strlen(want) && !memcmp(name, want, nlen);
}

/* --- S3 error documents: <Error><Code/><Message/><RequestId/></Error> */

static int error_doc_fn(void *ctx, int depth, const char *name, size_t nlen, int end, const char *text, size_t tlen)
{
        s3_call_t *c = ctx;
        if (depth == 1 && !end && !name_is(name, nlen, "Error"))
                return 1;
        if (depth != 2 || !end || !text)
                return 0;
        if (name_is(name, nlen, "Code"))
                ks_log_clean(c->s3_code, sizeof(c->s3_code), text, tlen);
        else if (name_is(name, nlen, "Message"))
                ks_log_clean(c->s3_msg, sizeof(c->s3_msg), text, tlen);
        else if (name_is(name, nlen, "RequestId") && !c->request_id[0])
                ks_log_clean(c->request_id, sizeof(c->request_id), text, tlen);
        return 0;
}

/* --- ListObjectsV2 results */

typedef struct list_ctx {
        ks_objlist_t *out;
        size_t *cap;
        const char *prefix;
        size_t plen;
        int in_contents;
        char *key;
        int have_size;
        int64_t size;
        int truncated;
        char *next_token;
        ks_err_t err;
        size_t skipped;
} list_ctx_t;

static int parse_i64(const char *s, size_t n, int64_t *out)
{
        int64_t v = 0;
        if (n == 0 || n > 19)
                return -1;
        for (size_t i = 0; i < n; i++) {
                if (s[i] < '0' || s[i] > '9')
                        return -1;
                if (v > (INT64_MAX - (s[i] - '0')) / 10)
                        return -1;
                v = v * 10 + (s[i] - '0');
        }
        *out = v;
        return 0;
}

static int list_fn(void *ctx, int depth, const char *name, size_t nlen, int end, const char *text, size_t tlen)
{
        list_ctx_t *l = ctx;
        if (depth == 1) {
                return !end && !name_is(name, nlen, "ListBucketResult");
        }
        if (depth == 2 && name_is(name, nlen, "Contents")) {
                if (!end) {
                        if (l->in_contents)
                                return 1;
                        l->in_contents = 1;
                        l->have_size = 0;
                        free(l->key);
                        l->key = NULL;
                        return 0;
                }
                l->in_contents = 0;
                if (!l->key || !l->have_size)
                        return 1; /* an entry without its key or size */
                size_t kl = strlen(l->key);
                if (kl < l->plen || memcmp(l->key, l->prefix, l->plen) != 0)
                        return 1; /* the server answered another prefix */
                if (ks_objstore_key_check(l->key) != KS_ERR_NONE) {
                        l->skipped++; /* not a key this store could have written */
                } else if ((l->err = ks_objlist_push(l->out, l->cap, l->key, kl, l->size)) != KS_ERR_NONE) {
                        return 1;
                }
                free(l->key);
                l->key = NULL;
                return 0;
        }
        if (!end || !text)
                return 0;
        if (depth == 3 && l->in_contents) {
                if (name_is(name, nlen, "Key")) {
                        if (l->key || tlen == 0 || tlen > KS_OBJSTORE_KEY_MAX || memchr(text, '\0', tlen))
                                return 1;
                        l->key = strndup(text, tlen);
                        if (!l->key) {
                                l->err = KS_ERR__NOMEM;
                                return 1;
                        }
                } else if (name_is(name, nlen, "Size")) {
                        if (l->have_size || parse_i64(text, tlen, &l->size))
                                return 1;
                        l->have_size = 1;
                }
        } else if (depth == 2) {
                if (name_is(name, nlen, "IsTruncated")) {
                        if (tlen == 4 && !memcmp(text, "true", 4))
                                l->truncated = 1;
                        else if (tlen == 5 && !memcmp(text, "false", 5))
                                l->truncated = 0;
                        else
                                return 1;
                } else if (name_is(name, nlen, "NextContinuationToken")) {
                        if (l->next_token || tlen == 0 || tlen > S3_MAX_TOKEN || memchr(text, '\0', tlen))
                                return 1;
                        l->next_token = strndup(text, tlen);
                        if (!l->next_token) {
                                l->err = KS_ERR__NOMEM;
                                return 1;
                        }
                }
        }
        return 0;
}

ks_err_t ks_s3_xml_list_page(const char *body, size_t len, const char *prefix, ks_objlist_t *out, size_t *cap,
                             int *truncated, char **next_token, size_t *skipped)
{
        list_ctx_t l = {.out = out, .cap = cap, .prefix = prefix, .plen = strlen(prefix)};
        ks_err_t err = xml_parse(body, len, list_fn, &l);
        if (l.err)
                err = l.err;
        free(l.key);
        *skipped += l.skipped;
        *truncated = l.truncated;
        if (err) {
                free(l.next_token);
                *next_token = NULL;
                return err;
        }
        *next_token = l.next_token;
        return KS_ERR_NONE;
}

void ks_s3_xml_error(const char *body, size_t len, char *code, size_t codelen, char *msg, size_t msglen,
                     char *request_id, size_t idlen)
{
        s3_call_t c;
        memset(&c, 0, sizeof(c));
        (void)xml_parse(body, len, error_doc_fn, &c);
        snprintf(code, codelen, "%s", c.s3_code);
        snprintf(msg, msglen, "%s", c.s3_msg);
        snprintf(request_id, idlen, "%s", c.request_id);
}

/* ------------------------------------------------------------ curl plumbing */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_OK;

static void curl_init_once(void)
{
        curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
        s3_call_t *c = ud;
        size_t n = size * nmemb;
        if (n > c->max_body - c->body_len_got) {
                c->body_too_large = 1;
                return 0; /* aborts the transfer: CURLE_WRITE_ERROR */
        }
        if (c->body_len_got + n > c->body_cap) {
                size_t ncap = c->body_cap ? c->body_cap : 4096;
                while (ncap < c->body_len_got + n)
                        ncap = ncap > SIZE_MAX / 2 ? c->body_len_got + n : ncap * 2;
                uint8_t *nb = realloc(c->body, ncap);
                if (!nb)
                        return 0;
                c->body = nb;
                c->body_cap = ncap;
        }
        memcpy(c->body + c->body_len_got, ptr, n);
        c->body_len_got += n;
        return n;
}

/* Value of header line `line` (len n) if its name is `name`, else NULL;
 * *vlen gets the trimmed value's length. */
static const char *header_value(const char *line, size_t n, const char *name, size_t *vlen)
{
        size_t nl = strlen(name);
        if (n <= nl || line[nl] != ':' || strncasecmp(line, name, nl) != 0)
                return NULL;
        const char *v = line + nl + 1, *e = line + n;
        while (v < e && (*v == ' ' || *v == '\t'))
                v++;
        while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' ' || e[-1] == '\t'))
                e--;
        *vlen = (size_t)(e - v);
        return v;
}

static size_t on_header(char *ptr, size_t size, size_t nmemb, void *ud)
{
        s3_call_t *c = ud;
        size_t n = size * nmemb, vl;
        const char *v;

        if (n >= 5 && !memcmp(ptr, "HTTP/", 5)) {
                /* A new response (after 100 Continue, say): forget the old one's headers. */
                c->request_id[0] = c->bucket_region[0] = '\0';
                c->cr_start = c->cr_total = -1;
                /* "HTTP/1.1 206 ...": three digits after the first space
                 * (the line is not NUL-terminated: stay inside n). */
                const char *sp = memchr(ptr, ' ', n);
                c->hdr_status = 0;
                if (sp && (size_t)(sp - ptr) + 4 <= n && isdigit((unsigned char)sp[1]) &&
                    isdigit((unsigned char)sp[2]) && isdigit((unsigned char)sp[3]))
                        c->hdr_status = (sp[1] - '0') * 100 + (sp[2] - '0') * 10 + (sp[3] - '0');
                return n;
        }
        if (n <= 2 && (ptr[0] == '\r' || ptr[0] == '\n')) {
                /* End of the headers.  A 206 whose Content-Range starts at or
                 * past the object's complete length has no content, whatever
                 * Content-Length claims (s3rver answers a range on an empty
                 * object with "bytes 0-0/0" and a body that never comes):
                 * stop here instead of waiting for it. */
                if (c->hdr_status == 206 && c->cr_total >= 0 && c->cr_start >= c->cr_total) {
                        c->range_empty = 1;
                        return 0; /* aborts the transfer */
                }
                return n;
        }
        if ((v = header_value(ptr, n, "x-amz-request-id", &vl)))
                ks_log_clean(c->request_id, sizeof(c->request_id), v, vl);
        else if ((v = header_value(ptr, n, "x-amz-bucket-region", &vl)))
                ks_log_clean(c->bucket_region, sizeof(c->bucket_region), v, vl);
        else if ((v = header_value(ptr, n, "content-range", &vl)) && vl > 6 && !memcmp(v, "bytes ", 6)) {
                /* "bytes S-E/T" or "bytes S-E/ *": keep S and T. */
                const char *dash = memchr(v + 6, '-', vl - 6), *slash = memchr(v, '/', vl);
                int64_t st, tot;
                if (dash && slash && dash < slash && !parse_i64(v + 6, (size_t)(dash - (v + 6)), &st)) {
                        c->cr_start = st;
                        if (!parse_i64(slash + 1, (size_t)(v + vl - (slash + 1)), &tot))
                                c->cr_total = tot;
                }
        } else if ((v = header_value(ptr, n, "content-length", &vl)) && !c->body && vl < 20) {
                int64_t len;
                if (!parse_i64(v, vl, &len) && len > 0 && (uint64_t)len <= c->max_body && len <= S3_MAX_PREALLOC) {
                        c->body = malloc((size_t)len);
                        if (c->body)
                                c->body_cap = (size_t)len;
                }
        }
        return n;
}

static size_t on_upload(char *buf, size_t size, size_t nitems, void *ud)
{
        s3_call_t *c = ud;
        size_t room = size * nitems, o = 0;
        while (o < room && c->up_i < c->iovcnt) {
                const struct iovec *v = &c->iov[c->up_i];
                size_t take = v->iov_len - c->up_off;
                if (take > room - o)
                        take = room - o;
                if (take)
                        memcpy(buf + o, (const char *)v->iov_base + c->up_off, take);
                o += take;
                c->up_off += take;
                if (c->up_off == v->iov_len) {
                        c->up_i++;
                        c->up_off = 0;
                }
        }
        c->up_pos += o;
        return o;
}

/* curl rewinds the upload when it must resend (e.g. on a reused connection
 * that turned out dead). */
static int on_seek(void *ud, curl_off_t offset, int origin)
{
        s3_call_t *c = ud;
        if (origin != SEEK_SET || offset < 0 || (uint64_t)offset > c->body_len)
                return CURL_SEEKFUNC_CANTSEEK;
        c->up_i = 0;
        c->up_off = 0;
        c->up_pos = 0;
        size_t left = (size_t)offset;
        while (left && c->up_i < c->iovcnt) {
                size_t l = c->iov[c->up_i].iov_len;
                if (left >= l) {
                        left -= l;
                        c->up_i++;
                } else {
                        c->up_off = left;
                        left = 0;
                }
        }
        c->up_pos = (size_t)offset;
        return CURL_SEEKFUNC_OK;
}

/* --- the handle pool (the concurrency bound) */

static CURL *pool_acquire(s3_store_t *s)
{
        CURL *h = NULL;
        pthread_mutex_lock(&s->mu);
        while (s->inflight >= s->concurrency)
                pthread_cond_wait(&s->cv, &s->mu);
        s->inflight++;
        if (s->nidle > 0)
                h = s->idle[--s->nidle];
        pthread_mutex_unlock(&s->mu);
        if (!h)
                h = curl_easy_init();
        if (!h) {
                pthread_mutex_lock(&s->mu);
                s->inflight--;
                pthread_cond_signal(&s->cv);
                pthread_mutex_unlock(&s->mu);
        }
        return h;
}

static void pool_release(s3_store_t *s, CURL *h)
{
        pthread_mutex_lock(&s->mu);
        if (s->nidle < s->concurrency) {
                s->idle[s->nidle++] = h;
                h = NULL;
        }
        s->inflight--;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        if (h)
                curl_easy_cleanup(h);
}

/* ------------------------------------------------------------ requests */

/* Path (as signed and sent) of c's target: "/<bucket>[/<key>]" (path-style)
 * or "/[<key>]" (virtual-hosted).  Caller frees. */
static char *request_path(const s3_store_t *s, const char *key)
{
        size_t klen = key ? strlen(key) : 0;
        size_t plen = strlen(s->path_prefix);
        char *p = malloc(plen + 1 + 3 * klen + 1);
        if (!p)
                return NULL;
        memcpy(p, s->path_prefix, plen);
        size_t o = plen;
        if (key || plen == 0)
                p[o++] = '/';
        p[o] = '\0';
        if (key)
                ks_sigv4_uri_encode(key, klen, 1, p + o, 3 * klen + 1);
        return p;
}

typedef enum { ATTEMPT_DONE, ATTEMPT_RETRY, ATTEMPT_FAIL } attempt_t;

static int retriable_code(const char *code)
{
        static const char *const codes[] = {"SlowDown",
                                            "RequestTimeout",
                                            "Throttling",
                                            "ThrottlingException",
                                            "RequestThrottled",
                                            "RequestLimitExceeded",
                                            "InternalError",
                                            "ServiceUnavailable",
                                            "PriorRequestNotComplete"};
        for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
                if (!strcmp(code, codes[i]))
                        return 1;
        return 0;
}

static int retriable_curl(CURLcode cc)
{
        switch (cc) {
        case CURLE_COULDNT_CONNECT:
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_RESOLVE_PROXY:
        case CURLE_OPERATION_TIMEDOUT:
        case CURLE_SEND_ERROR:
        case CURLE_RECV_ERROR:
        case CURLE_GOT_NOTHING:
        case CURLE_PARTIAL_FILE:
        case CURLE_SSL_CONNECT_ERROR:
        case CURLE_HTTP2:
        case CURLE_HTTP2_STREAM:
        case CURLE_WEIRD_SERVER_REPLY:
        case CURLE_AGAIN:
                return 1;
        default:
                return 0;
        }
}

static void call_reset_response(s3_call_t *c)
{
        free(c->body);
        c->body = NULL;
        c->body_len_got = c->body_cap = 0;
        c->body_too_large = 0;
        c->status = 0;
        c->cc = CURLE_OK;
        c->curl_err[0] = c->request_id[0] = c->bucket_region[0] = c->s3_code[0] = c->s3_msg[0] = '\0';
        c->hdr_status = 0;
        c->cr_start = c->cr_total = -1;
        c->range_empty = 0;
        c->up_i = 0;
        c->up_off = c->up_pos = 0;
}

/* One attempt: sign, send, receive.  The pool slot is held only here. */
static attempt_t s3_attempt(s3_store_t *s, s3_call_t *c, ks_err_t *fail)
{
        char amz_date[17], *path = NULL, *url = NULL;
        struct curl_slist *hdrs = NULL;
        ks_sigv4_output_t sig = {0};
        attempt_t res = ATTEMPT_FAIL;
        CURL *h = NULL;
        ks_err_t err;

        call_reset_response(c);
        *fail = KS_ERR__NOMEM;
        path = request_path(s, c->key);
        if (!path)
                goto out;
        size_t ulen = strlen(s->origin) + strlen(path) + strlen(c->query) + 2;
        url = malloc(ulen);
        if (!url)
                goto out;
        snprintf(url, ulen, "%s%s%s%s", s->origin, path, c->query[0] ? "?" : "", c->query);

        ks_sigv4_header_t sh[2] = {{"Host", s->host_header}};
        size_t nsh = 1;
        if (c->range[0])
                sh[nsh++] = (ks_sigv4_header_t){"Range", c->range};
        ks_sigv4_amz_date(ks_clock_wall_ms(ks_clock_system()), amz_date);
        ks_sigv4_input_t in = {
            .method = c->method,
            .path = path,
            .query = c->query,
            .headers = sh,
            .nheaders = nsh,
            .payload_hash = c->payload_hash,
            .region = s->region,
            .service = "s3",
            .access_key = s->access_key,
            .secret_key = s->secret_key,
            .session_token = s->session_token,
            .amz_date = amz_date,
        };
        err = ks_sigv4_sign(&in, &sig);
        if (err) {
                *fail = err;
                ks_log_error("s3_sign_failed", "op=%s %s=\"%s\" error=%s", c->op, c->subj_name, c->subj,
                             ks_err_name(err));
                goto out;
        }
        for (size_t i = 0; i < nsh; i++) {
                char *hl;
                if (asprintf(&hl, "%s: %s", sh[i].name, sh[i].value) < 0)
                        goto out;
                struct curl_slist *n = curl_slist_append(hdrs, hl);
                free(hl);
                if (!n)
                        goto out;
                hdrs = n;
        }
        for (int i = 0; i < sig.nadd; i++) {
                char *hl;
                if (asprintf(&hl, "%s: %s", sig.add[i].name, sig.add[i].value) < 0)
                        goto out;
                struct curl_slist *n = curl_slist_append(hdrs, hl);
                free(hl);
                if (!n)
                        goto out;
                hdrs = n;
        }
        /* No "Expect: 100-continue" round trip; no Content-Type on PUT. */
        const char *extra[] = {"Expect:", "Content-Type:", "Accept:"};
        for (size_t i = 0; i < sizeof(extra) / sizeof(extra[0]); i++) {
                struct curl_slist *n = curl_slist_append(hdrs, extra[i]);
                if (!n)
                        goto out;
                hdrs = n;
        }

        h = pool_acquire(s);
        if (!h)
                goto out;
        curl_easy_reset(h); /* keeps the handle's live connections */
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)s->timeout_ms);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)(s->timeout_ms < 10000 ? s->timeout_ms : 10000));
        curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->curl_err);
        curl_easy_setopt(h, CURLOPT_USERAGENT, "kafscale");
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, c);
        curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(h, CURLOPT_HEADERDATA, c);
        if (!strcmp(c->method, "PUT")) {
                curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
                curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)c->body_len);
                curl_easy_setopt(h, CURLOPT_READFUNCTION, on_upload);
                curl_easy_setopt(h, CURLOPT_READDATA, c);
                curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, on_seek);
                curl_easy_setopt(h, CURLOPT_SEEKDATA, c);
        } else if (!strcmp(c->method, "HEAD")) {
                curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
        } else if (strcmp(c->method, "GET") != 0) {
                curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, c->method);
        }
        c->cc = curl_easy_perform(h);
        if (c->cc == CURLE_OK)
                curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &c->status);
        /* Drop every pointer into this call (headers, buffers, callbacks'
         * data) before the handle goes back; its connection stays open. */
        curl_easy_reset(h);
        pool_release(s, h);
        c->attempts++;

        if (c->cc != CURLE_OK && c->range_empty) {
                /* Stopped on purpose after the headers: an empty range. */
                c->cc = CURLE_OK;
                c->status = 416;
                c->body_len_got = 0;
                *fail = KS_ERR_NONE;
                res = ATTEMPT_DONE;
                goto out;
        }
        if (c->cc != CURLE_OK) {
                if (!c->curl_err[0])
                        snprintf(c->curl_err, sizeof(c->curl_err), "%s", curl_easy_strerror(c->cc));
                ks_log_clean(c->curl_err, sizeof(c->curl_err), c->curl_err, strlen(c->curl_err));
                c->timed_out = c->cc == CURLE_OPERATION_TIMEDOUT;
                if (c->body_too_large) {
                        ks_log_error("s3_response_too_large", "op=%s %s=\"%s\" limit=%zu", c->op, c->subj_name, c->subj,
                                     c->max_body);
                        *fail = KS_ERR__TOO_LARGE;
                        res = ATTEMPT_FAIL;
                } else if (c->cc == CURLE_OUT_OF_MEMORY) {
                        *fail = KS_ERR__NOMEM;
                        res = ATTEMPT_FAIL;
                } else if (retriable_curl(c->cc)) {
                        res = ATTEMPT_RETRY;
                } else {
                        ks_log_error("s3_request_failed", "op=%s %s=\"%s\" url=\"%s\" curl_code=%d error=\"%s\"", c->op,
                                     c->subj_name, c->subj, url, (int)c->cc, c->curl_err);
                        *fail = KS_ERR__IO;
                        res = ATTEMPT_FAIL;
                }
                goto out;
        }
        c->timed_out = 0;
        if (c->status >= 300 && c->body_len_got)
                (void)xml_parse((const char *)c->body, c->body_len_got, error_doc_fn, c);
        if (c->status >= 500 || c->status == 408 || c->status == 429 || retriable_code(c->s3_code))
                res = ATTEMPT_RETRY;
        else
                res = ATTEMPT_DONE;
        *fail = KS_ERR_NONE;
out:
        curl_slist_free_all(hdrs);
        ks_sigv4_output_free(&sig);
        free(path);
        free(url);
        return res;
}

/* Runs c with retries.  KS_ERR_NONE: a final HTTP answer is in c->status
 * (any status; the operation interprets it).  Otherwise the request could
 * not get a final answer: _UNAVAILABLE / _TIMEOUT after the retries, or a
 * non-retriable local failure (_IO, _NOMEM, _TOO_LARGE). */
static ks_err_t s3_run(s3_store_t *s, s3_call_t *c)
{
        ks_err_t fail = KS_ERR_NONE;
        int64_t t0 = ks_clock_mono_ms(ks_clock_system());

        for (int attempt = 1;; attempt++) {
                attempt_t r = s3_attempt(s, c, &fail);
                if (r == ATTEMPT_DONE)
                        return KS_ERR_NONE;
                if (r == ATTEMPT_FAIL)
                        return fail;
                if (attempt > s->max_retries)
                        break;
                int64_t delay = ks_objstore_backoff_ms(attempt, S3_BACKOFF_BASE_MS, S3_BACKOFF_CAP_MS);
                if (c->cc != CURLE_OK)
                        ks_log_warn("s3_retry", "op=%s %s=\"%s\" attempt=%d/%d error=\"%s\" delay_ms=%" PRId64, c->op,
                                    c->subj_name, c->subj, attempt, s->max_retries + 1, c->curl_err, delay);
                else
                        ks_log_warn("s3_retry",
                                    "op=%s %s=\"%s\" attempt=%d/%d status=%ld code=\"%s\" request_id=\"%s\" "
                                    "delay_ms=%" PRId64,
                                    c->op, c->subj_name, c->subj, attempt, s->max_retries + 1, c->status, c->s3_code,
                                    c->request_id, delay);
                ks_objstore_sleep_ms(delay);
        }
        int64_t took = ks_clock_mono_ms(ks_clock_system()) - t0;
        if (c->cc != CURLE_OK) {
                ks_log_error("s3_request_failed",
                             "op=%s %s=\"%s\" endpoint=\"%s\" attempts=%d elapsed_ms=%" PRId64 " error=\"%s\"", c->op,
                             c->subj_name, c->subj, s->endpoint, c->attempts, took, c->curl_err);
                return c->timed_out ? KS_ERR__TIMEOUT : KS_ERR__UNAVAILABLE;
        }
        ks_log_error("s3_request_failed",
                     "op=%s %s=\"%s\" endpoint=\"%s\" attempts=%d elapsed_ms=%" PRId64
                     " status=%ld code=\"%s\" message=\"%s\" request_id=\"%s\"",
                     c->op, c->subj_name, c->subj, s->endpoint, c->attempts, took, c->status, c->s3_code, c->s3_msg,
                     c->request_id);
        return c->status == 408 || !strcmp(c->s3_code, "RequestTimeout") ? KS_ERR__TIMEOUT : KS_ERR__UNAVAILABLE;
}

/* A final answer the operation does not accept: log it where it failed and
 * map it.  Never retriable from here. */
static ks_err_t s3_http_error(const s3_store_t *s, const s3_call_t *c)
{
        const char *hint = "";
        if (c->status == 403)
                hint = " hint=\"access denied: check the credentials (KAFSCALE_S3_ACCESS_KEY/KAFSCALE_S3_SECRET_KEY "
                       "or AWS_*), the session token and the bucket policy\"";
        else if (c->status == 301 || !strcmp(c->s3_code, "AuthorizationHeaderMalformed"))
                hint = " hint=\"wrong region: check KAFSCALE_S3_REGION\"";
        else if (!strcmp(c->s3_code, "NoSuchBucket"))
                hint = " hint=\"the bucket does not exist\"";
        ks_log_error("s3_request_failed",
                     "op=%s bucket=\"%s\" %s=\"%s\" status=%ld code=\"%s\" message=\"%s\" request_id=\"%s\"%s", c->op,
                     s->bucket, c->subj_name, c->subj, c->status, c->s3_code, c->s3_msg, c->request_id, hint);
        return KS_ERR__IO;
}

static void call_init(s3_call_t *c, const char *op, const char *method, const char *key)
{
        memset(c, 0, sizeof(*c));
        c->op = op;
        c->method = method;
        c->key = key;
        c->subj_name = "key";
        c->subj = key ? key : "";
        c->query = "";
        c->payload_hash = KS_SIGV4_EMPTY_SHA256;
        c->max_body = S3_MAX_ERROR_BODY;
}

static void call_free(s3_call_t *c)
{
        free(c->body);
        c->body = NULL;
}

/* ------------------------------------------------------------ operations */

static ks_err_t s3_put(ks_objstore_t *st, const char *key, const struct iovec *iov, int iovcnt)
{
        s3_store_t *s = (s3_store_t *)st;
        char hash[65];
        s3_call_t c;
        ks_err_t err = ks_objstore_key_check(key);

        if (err)
                return err;
        if (iovcnt < 0 || (iovcnt > 0 && !iov))
                return KS_ERR__INVALID_ARG;
        call_init(&c, "put", "PUT", key);
        for (int i = 0; i < iovcnt; i++) {
                if (iov[i].iov_len > SIZE_MAX - c.body_len)
                        return KS_ERR__TOO_LARGE;
                c.body_len += iov[i].iov_len;
        }
        if ((err = ks_sigv4_sha256_iov_hex(iov, iovcnt, hash)) != KS_ERR_NONE)
                return err;
        c.iov = iov;
        c.iovcnt = iovcnt;
        c.payload_hash = hash;
        err = s3_run(s, &c);
        if (!err && (c.status < 200 || c.status > 299))
                err = s3_http_error(s, &c);
        call_free(&c);
        return err;
}

static ks_err_t s3_get(ks_objstore_t *st, const char *key, int64_t offset, int64_t len, ks_objbuf_t *out)
{
        s3_store_t *s = (s3_store_t *)st;
        s3_call_t c;
        ks_err_t err = ks_objstore_key_check(key);

        out->data = NULL;
        out->len = 0;
        if (err)
                return err;
        if (offset < 0 || len < -1 || (len > 0 && offset > INT64_MAX - len))
                return KS_ERR__INVALID_ARG;
        if (len > 0 && (uint64_t)len >= SIZE_MAX)
                return KS_ERR__TOO_LARGE;

        /* An empty range only needs to know whether the object exists. */
        call_init(&c, "get", len == 0 ? "HEAD" : "GET", key);
        /* No cap below the object itself: a server that ignores Range sends
         * all of it, and it is cut to the range below. */
        c.max_body = SIZE_MAX - 1;
        if (len > 0)
                snprintf(c.range, sizeof(c.range), "bytes=%" PRId64 "-%" PRId64, offset, offset + len - 1);
        else if (len == -1 && offset > 0)
                snprintf(c.range, sizeof(c.range), "bytes=%" PRId64 "-", offset);

        err = s3_run(s, &c);
        if (err)
                goto out;
        if (c.status == 404 && strcmp(c.s3_code, "NoSuchBucket") != 0) {
                ks_log_debug("s3_get_not_found", "key=\"%s\"", key);
                err = KS_ERR__NOT_FOUND;
                goto out;
        }
        if (c.status == 416) {
                /* Range not satisfiable: the object exists and the offset is
                 * at or past its end (or it is empty). */
                c.body_len_got = 0;
        } else if (c.status == 200 && len != 0 && (offset > 0 || len > 0)) {
                /* The server ignored Range and sent the whole object: cut. */
                int64_t start, n;
                ks_objstore_range_clip((int64_t)c.body_len_got, offset, len, &start, &n);
                if (n && start)
                        memmove(c.body, c.body + start, (size_t)n);
                c.body_len_got = (size_t)n;
        } else if (c.status == 206) {
                if (c.cr_start != -1 && c.cr_start != offset) {
                        ks_log_error("s3_bad_range_answer",
                                     "op=get key=\"%s\" requested_offset=%" PRId64 " content_range_start=%" PRId64
                                     " request_id=\"%s\"",
                                     key, offset, c.cr_start, c.request_id);
                        err = KS_ERR__IO;
                        goto out;
                }
                if (len > 0 && c.body_len_got > (size_t)len)
                        c.body_len_got = (size_t)len;
        } else if (c.status == 200) {
                if (len == 0)
                        c.body_len_got = 0;
        } else {
                err = s3_http_error(s, &c);
                goto out;
        }
        if (!c.body) {
                c.body = malloc(1);
                if (!c.body) {
                        err = KS_ERR__NOMEM;
                        goto out;
                }
        }
        out->data = c.body;
        out->len = c.body_len_got;
        c.body = NULL;
out:
        call_free(&c);
        return err;
}

static ks_err_t s3_list(ks_objstore_t *st, const char *prefix, ks_objlist_t *out)
{
        s3_store_t *s = (s3_store_t *)st;
        ks_err_t err = ks_objstore_prefix_check(prefix);
        char *token = NULL, *query = NULL;
        size_t cap = 0, skipped = 0;

        out->items = NULL;
        out->count = 0;
        if (err)
                return err;
        for (int page = 0;; page++) {
                ks_sigv4_param_t params[3] = {{"list-type", "2"}, {"prefix", prefix}};
                size_t np = 2;
                if (token)
                        params[np++] = (ks_sigv4_param_t){"continuation-token", token};
                if (page >= S3_MAX_PAGES) {
                        ks_log_error("s3_list_failed", "prefix=\"%s\" reason=\"too many pages\"", prefix);
                        err = KS_ERR__PARSE;
                        break;
                }
                free(query);
                query = NULL;
                if ((err = ks_sigv4_query_build(params, np, &query)) != KS_ERR_NONE)
                        break;

                s3_call_t c;
                call_init(&c, "list", "GET", NULL);
                c.subj_name = "prefix";
                c.subj = prefix;
                c.query = query;
                c.max_body = S3_MAX_LIST_BODY;
                err = s3_run(s, &c);
                if (!err && c.status != 200)
                        err = s3_http_error(s, &c);
                if (err) {
                        call_free(&c);
                        break;
                }
                int truncated = 0;
                char *next_token = NULL;
                err = ks_s3_xml_list_page((const char *)c.body, c.body_len_got, prefix, out, &cap, &truncated,
                                          &next_token, &skipped);
                call_free(&c);
                if (!err && truncated && (!next_token || (token && !strcmp(token, next_token)))) {
                        err = KS_ERR__PARSE; /* would loop forever */
                }
                if (err) {
                        ks_log_error("s3_list_failed",
                                     "bucket=\"%s\" prefix=\"%s\" page=%d error=%s reason=\"malformed "
                                     "ListObjectsV2 answer\"",
                                     s->bucket, prefix, page, ks_err_name(err));
                        free(next_token);
                        break;
                }
                free(token);
                token = next_token;
                if (!truncated)
                        break;
        }
        free(token);
        free(query);
        if (err) {
                ks_objlist_free(out);
                return err;
        }
        if (skipped)
                ks_log_warn("s3_list_skipped_keys",
                            "bucket=\"%s\" prefix=\"%s\" skipped=%zu reason=\"not valid "
                            "Kafscale object keys\"",
                            s->bucket, prefix, skipped);
        ks_objlist_sort(out);
        return KS_ERR_NONE;
}

static ks_err_t s3_del(ks_objstore_t *st, const char *key)
{
        s3_store_t *s = (s3_store_t *)st;
        s3_call_t c;
        ks_err_t err = ks_objstore_key_check(key);

        if (err)
                return err;
        call_init(&c, "del", "DELETE", key);
        err = s3_run(s, &c);
        if (!err && !(c.status >= 200 && c.status <= 299) &&
            !(c.status == 404 && strcmp(c.s3_code, "NoSuchBucket") != 0))
                err = s3_http_error(s, &c);
        call_free(&c);
        return err;
}

static ks_err_t s3_check(ks_objstore_t *st, char *msg, size_t msglen)
{
        s3_store_t *s = (s3_store_t *)st;
        char dummy[8];
        s3_call_t c;
        ks_err_t err;

        if (!msg || !msglen) {
                msg = dummy;
                msglen = sizeof(dummy);
        }
        msg[0] = '\0';
        call_init(&c, "check", "HEAD", NULL);
        c.subj_name = "bucket";
        c.subj = s->bucket;
        err = s3_run(s, &c);
        if (err) {
                if (c.cc != CURLE_OK)
                        snprintf(msg, msglen, "S3 endpoint %s is unreachable (bucket \"%s\"): %s (%d attempts)",
                                 s->endpoint, s->bucket, c.curl_err, c.attempts);
                else
                        snprintf(msg, msglen,
                                 "S3 endpoint %s is not available (bucket \"%s\"): HTTP %ld %s after %d attempts",
                                 s->endpoint, s->bucket, c.status, c.s3_code, c.attempts);
                goto out;
        }
        if (c.status >= 200 && c.status <= 299)
                goto out;

        /* HEAD answers carry no error document: ask again with a GET to
         * name the problem precisely. */
        long head_status = c.status;
        char region[sizeof(c.bucket_region)];
        memcpy(region, c.bucket_region, sizeof(region));
        if (head_status != 404) {
                s3_call_t d;
                call_init(&d, "check", "GET", NULL);
                d.subj_name = "bucket";
                d.subj = s->bucket;
                d.query = "list-type=2&max-keys=1";
                if (s3_run(s, &d) == KS_ERR_NONE && d.status == head_status) {
                        memcpy(c.s3_code, d.s3_code, sizeof(c.s3_code));
                        memcpy(c.s3_msg, d.s3_msg, sizeof(c.s3_msg));
                        if (!region[0])
                                memcpy(region, d.bucket_region, sizeof(region));
                }
                call_free(&d);
        }
        if (head_status == 404) {
                snprintf(msg, msglen,
                         "S3 bucket \"%s\" does not exist at %s (HEAD bucket answered 404); create it or "
                         "fix KAFSCALE_S3_BUCKET",
                         s->bucket, s->endpoint);
                err = KS_ERR__NOT_FOUND;
        } else if (region[0] && strcmp(region, s->region) != 0) {
                snprintf(msg, msglen, "S3 bucket \"%s\" is in region %s, not %s: set KAFSCALE_S3_REGION=%s", s->bucket,
                         region, s->region, region);
                err = KS_ERR__IO;
        } else if (head_status == 403 || head_status == 401) {
                snprintf(msg, msglen,
                         "S3 at %s rejected the credentials for bucket \"%s\" (HTTP %ld%s%s%s%s): check "
                         "KAFSCALE_S3_ACCESS_KEY and KAFSCALE_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY), the session token and the bucket policy",
                         s->endpoint, s->bucket, head_status, c.s3_code[0] ? " " : "", c.s3_code,
                         c.s3_msg[0] ? ": " : "", c.s3_msg);
                err = KS_ERR__IO;
        } else {
                snprintf(msg, msglen, "S3 at %s answered HTTP %ld%s%s%s%s to HEAD bucket \"%s\"", s->endpoint,
                         head_status, c.s3_code[0] ? " " : "", c.s3_code, c.s3_msg[0] ? ": " : "", c.s3_msg, s->bucket);
                err = KS_ERR__IO;
        }
        ks_log_error("s3_check_failed", "bucket=\"%s\" endpoint=\"%s\" status=%ld code=\"%s\" message=\"%s\"",
                     s->bucket, s->endpoint, head_status, c.s3_code, c.s3_msg);
out:
        call_free(&c);
        return err;
}

static void s3_destroy(ks_objstore_t *st)
{
        s3_store_t *s = (s3_store_t *)st;
        if (!s)
                return;
        for (int i = 0; i < s->nidle; i++)
                curl_easy_cleanup(s->idle[i]);
        free(s->idle);
        pthread_cond_destroy(&s->cv);
        pthread_mutex_destroy(&s->mu);
        if (s->secret_key)
                memset(s->secret_key, 0, strlen(s->secret_key));
        free(s->bucket);
        free(s->region);
        free(s->access_key);
        free(s->secret_key);
        free(s->session_token);
        free(s->origin);
        free(s->host_header);
        free(s->path_prefix);
        free(s->endpoint);
        free(s);
}

static const ks_objstore_ops_t s3_ops = {
    .name = "s3",
    .put = s3_put,
    .get = s3_get,
    .list = s3_list,
    .del = s3_del,
    .check = s3_check,
    .destroy = s3_destroy,
};

static ks_err_t bad_config(const char *field, const char *why)
{
        ks_log_error("objstore_s3_bad_config", "field=%s reason=\"%s\"", field, why);
        return KS_ERR__INVALID_ARG;
}

ks_err_t ks_objstore_s3_new(const ks_s3_config_t *cfg, ks_objstore_t **out)
{
        ks_s3_endpoint_t ep;
        char why[160];
        s3_store_t *s;

        *out = NULL;
        if (!nonempty(cfg->bucket))
                return bad_config("bucket", "empty");
        if (!nonempty(cfg->region))
                return bad_config("region", "empty");
        if (!nonempty(cfg->access_key) || !nonempty(cfg->secret_key))
                return bad_config("access_key/secret_key", "credentials are required");
        if (cfg->concurrency < 1)
                return bad_config("concurrency", "must be at least 1");
        if (cfg->timeout_ms < 1)
                return bad_config("timeout_ms", "must be at least 1");
        if (cfg->max_retries < 0)
                return bad_config("max_retries", "must not be negative");
        for (const char *p = cfg->bucket; *p; p++)
                if (!isalnum((unsigned char)*p) && *p != '.' && *p != '-' && *p != '_')
                        return bad_config("bucket", "invalid character");
        for (const char *p = cfg->region; *p; p++)
                if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_')
                        return bad_config("region", "invalid character");

        char aws_default[128];
        const char *endpoint = cfg->endpoint;
        if (!nonempty(endpoint)) {
                snprintf(aws_default, sizeof(aws_default), "https://s3.%s.amazonaws.com", cfg->region);
                endpoint = aws_default;
        }
        if (ks_s3_endpoint_parse(endpoint, &ep, why, sizeof(why)) != KS_ERR_NONE)
                return bad_config("endpoint", why);
        if (!cfg->path_style && ep.is_ip)
                return bad_config("path_style", "virtual-hosted addressing needs a DNS name endpoint, not an IP");

        pthread_once(&curl_once, curl_init_once);
        if (curl_init_rc != CURLE_OK) {
                ks_log_error("objstore_s3_curl_init_failed", "error=\"%s\"", curl_easy_strerror(curl_init_rc));
                return KS_ERR__IO;
        }

        s = calloc(1, sizeof(*s));
        if (!s)
                return KS_ERR__NOMEM;
        s->base.ops = &s3_ops;
        if (pthread_mutex_init(&s->mu, NULL) != 0) {
                free(s);
                return KS_ERR__NOMEM;
        }
        if (pthread_cond_init(&s->cv, NULL) != 0) {
                pthread_mutex_destroy(&s->mu);
                free(s);
                return KS_ERR__NOMEM;
        }
        s->concurrency = cfg->concurrency;
        s->timeout_ms = cfg->timeout_ms;
        s->max_retries = cfg->max_retries;
        s->bucket = strdup(cfg->bucket);
        s->region = strdup(cfg->region);
        s->access_key = strdup(cfg->access_key);
        s->secret_key = strdup(cfg->secret_key);
        s->session_token = nonempty(cfg->session_token) ? strdup(cfg->session_token) : NULL;
        s->endpoint = dup_or_null(endpoint);
        s->idle = calloc((size_t)cfg->concurrency, sizeof(*s->idle));

        /* Host as sent: [bucket.]host[:port], port omitted when default. */
        const char *scheme = ep.https ? "https" : "http";
        int default_port = ep.https ? 443 : 80;
        char hostport[512];
        int v6 = strchr(ep.host, ':') != NULL;
        if (ep.port && ep.port != default_port)
                snprintf(hostport, sizeof(hostport), "%s%s%s%s%s:%d", cfg->path_style ? "" : cfg->bucket,
                         cfg->path_style ? "" : ".", v6 ? "[" : "", ep.host, v6 ? "]" : "", ep.port);
        else
                snprintf(hostport, sizeof(hostport), "%s%s%s%s%s", cfg->path_style ? "" : cfg->bucket,
                         cfg->path_style ? "" : ".", v6 ? "[" : "", ep.host, v6 ? "]" : "");
        s->host_header = strdup(hostport);
        if (asprintf(&s->origin, "%s://%s", scheme, hostport) < 0)
                s->origin = NULL;
        if (cfg->path_style) {
                size_t bl = strlen(cfg->bucket);
                s->path_prefix = malloc(bl + 2);
                if (s->path_prefix) {
                        s->path_prefix[0] = '/';
                        memcpy(s->path_prefix + 1, cfg->bucket, bl + 1);
                }
        } else {
                s->path_prefix = strdup("");
        }
        if (!s->bucket || !s->region || !s->access_key || !s->secret_key ||
            (nonempty(cfg->session_token) && !s->session_token) || !s->endpoint || !s->idle || !s->host_header ||
            !s->origin || !s->path_prefix) {
                s3_destroy(&s->base);
                return KS_ERR__NOMEM;
        }
        ks_log_debug("objstore_s3_open",
                     "bucket=\"%s\" region=%s endpoint=\"%s\" origin=\"%s\" path_style=%d "
                     "concurrency=%d timeout_ms=%d max_retries=%d",
                     s->bucket, s->region, s->endpoint, s->origin, cfg->path_style, s->concurrency, s->timeout_ms,
                     s->max_retries);
        *out = &s->base;
        return KS_ERR_NONE;
}
