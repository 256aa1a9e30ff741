/*
 * sigv4.c — AWS Signature Version 4 (see sigv4.h for the contract).
 *
 * SHA-256 and HMAC come from OpenSSL's libcrypto (EVP digests and the
 * one-shot HMAC()).  All strings are built with a small growable buffer whose
 * allocation failure is sticky, so each builder is checked once at the end.
 */
#include "storage/sigv4.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------ string builder */

typedef struct sb {
        char *p;
        size_t len, cap;
        int oom;
} sb_t;

static void sb_reserve(sb_t *b, size_t more)
{
        if (b->oom)
                return;
        if (b->len + more + 1 <= b->cap)
                return;
        size_t ncap = b->cap ? b->cap : 256;
        while (ncap < b->len + more + 1)
                ncap *= 2;
        char *n = realloc(b->p, ncap);
        if (!n) {
                b->oom = 1;
                return;
        }
        b->p = n;
        b->cap = ncap;
}

static void sb_addn(sb_t *b, const char *s, size_t n)
{
        sb_reserve(b, n);
        if (b->oom)
                return;
        memcpy(b->p + b->len, s, n);
        b->len += n;
        b->p[b->len] = '\0';
}

static void sb_add(sb_t *b, const char *s)
{
        sb_addn(b, s, strlen(s));
}

static void sb_addc(sb_t *b, char c)
{
        sb_addn(b, &c, 1);
}

/* Returns the built string (caller frees) or NULL on allocation failure;
 * an empty builder yields "". */
static char *sb_take(sb_t *b)
{
        if (!b->oom && !b->p) {
                sb_reserve(b, 0);
                if (!b->oom)
                        b->p[0] = '\0';
        }
        if (b->oom) {
                free(b->p);
                b->p = NULL;
                return NULL;
        }
        char *p = b->p;
        b->p = NULL;
        b->len = b->cap = 0;
        return p;
}

/* ------------------------------------------------------------ hashing */

static const char hexdig[] = "0123456789abcdef";

static void to_hex(const unsigned char *in, size_t n, char *out)
{
        for (size_t i = 0; i < n; i++) {
                out[2 * i] = hexdig[in[i] >> 4];
                out[2 * i + 1] = hexdig[in[i] & 15];
        }
        out[2 * n] = '\0';
}

void ks_sigv4_sha256_hex(const void *data, size_t len, char out[65])
{
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int mdlen = 0;
        if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32) {
                /* libcrypto cannot fail here short of memory exhaustion; an
                 * all-zero hash makes the request fail verification loudly. */
                memset(md, 0, 32);
        }
        to_hex(md, 32, out);
}

ks_err_t ks_sigv4_sha256_iov_hex(const struct iovec *iov, int iovcnt, char out[65])
{
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int mdlen = 0;
        ks_err_t err = KS_ERR__NOMEM;
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();

        out[0] = '\0';
        if (!ctx)
                return KS_ERR__NOMEM;
        if (!EVP_DigestInit_ex(ctx, EVP_sha256(), NULL))
                goto out;
        for (int i = 0; i < iovcnt; i++)
                if (iov[i].iov_len && !EVP_DigestUpdate(ctx, iov[i].iov_base, iov[i].iov_len))
                        goto out;
        if (!EVP_DigestFinal_ex(ctx, md, &mdlen) || mdlen != 32)
                goto out;
        to_hex(md, 32, out);
        err = KS_ERR_NONE;
out:
        EVP_MD_CTX_free(ctx);
        return err;
}

static int hmac_sha256(const void *key, size_t keylen, const char *msg, unsigned char out[32])
{
        unsigned int outlen = 0;
        if (!HMAC(EVP_sha256(), key, (int)keylen, (const unsigned char *)msg, strlen(msg), out, &outlen))
                return -1;
        return outlen == 32 ? 0 : -1;
}

/* ------------------------------------------------------------ encoding */

static int unreserved(unsigned char c)
{
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
               c == '.' || c == '~';
}

size_t ks_sigv4_uri_encode(const char *s, size_t len, int keep_slash, char *out, size_t outsz)
{
        static const char up[] = "0123456789ABCDEF";
        size_t need = 0;

        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char)s[i];
                char enc[3];
                size_t k;
                if (unreserved(c) || (keep_slash && c == '/')) {
                        enc[0] = (char)c;
                        k = 1;
                } else {
                        enc[0] = '%';
                        enc[1] = up[c >> 4];
                        enc[2] = up[c & 15];
                        k = 3;
                }
                for (size_t j = 0; j < k; j++, need++)
                        if (outsz && need < outsz - 1)
                                out[need] = enc[j];
        }
        if (outsz)
                out[need < outsz - 1 ? need : outsz - 1] = '\0';
        return need;
}

static char *uri_encode_dup(const char *s, int keep_slash)
{
        size_t len = strlen(s);
        char *out = malloc(3 * len + 1);
        if (out)
                ks_sigv4_uri_encode(s, len, keep_slash, out, 3 * len + 1);
        return out;
}

typedef struct enc_param {
        char *name, *value;
} enc_param_t;

static int cmp_enc_param(const void *pa, const void *pb)
{
        const enc_param_t *a = pa, *b = pb;
        int c = strcmp(a->name, b->name);
        return c ? c : strcmp(a->value, b->value);
}

ks_err_t ks_sigv4_query_build(const ks_sigv4_param_t *params, size_t n, char **out)
{
        enc_param_t *e = n ? calloc(n, sizeof(*e)) : NULL;
        ks_err_t err = KS_ERR__NOMEM;
        sb_t b = {0};

        *out = NULL;
        if (n && !e)
                return KS_ERR__NOMEM;
        for (size_t i = 0; i < n; i++) {
                if (!params[i].name || !params[i].name[0]) {
                        err = KS_ERR__INVALID_ARG;
                        goto out;
                }
                e[i].name = uri_encode_dup(params[i].name, 0);
                e[i].value = uri_encode_dup(params[i].value ? params[i].value : "", 0);
                if (!e[i].name || !e[i].value)
                        goto out;
        }
        if (n)
                qsort(e, n, sizeof(*e), cmp_enc_param);
        for (size_t i = 0; i < n; i++) {
                if (i)
                        sb_addc(&b, '&');
                sb_add(&b, e[i].name);
                sb_addc(&b, '=');
                sb_add(&b, e[i].value);
        }
        *out = sb_take(&b);
        err = *out ? KS_ERR_NONE : KS_ERR__NOMEM;
out:
        for (size_t i = 0; i < n && e; i++) {
                free(e[i].name);
                free(e[i].value);
        }
        free(e);
        free(b.p);
        return err;
}

void ks_sigv4_amz_date(int64_t wall_ms, char out[17])
{
        time_t t = (time_t)(wall_ms / 1000);
        struct tm tm;
        if (!gmtime_r(&t, &tm) || strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm) != 16)
                snprintf(out, 17, "19700101T000000Z");
}

/* ------------------------------------------------------------ signing */

typedef struct canon_hdr {
        char *name;  /* lower-case, owned */
        char *value; /* trimmed, owned */
        size_t order;
} canon_hdr_t;

static int cmp_canon_hdr(const void *pa, const void *pb)
{
        const canon_hdr_t *a = pa, *b = pb;
        int c = strcmp(a->name, b->name);
        if (c)
                return c;
        return (a->order > b->order) - (a->order < b->order);
}

/* RFC 7230 token characters: what a header name may consist of. */
static int token_char(unsigned char c)
{
        if (c <= 32 || c >= 127)
                return 0;
        return !strchr("\"(),/:;<=>?@[\\]{}", c);
}

static char *lower_dup(const char *s)
{
        size_t n = strlen(s);
        char *d = malloc(n + 1);
        if (!d)
                return NULL;
        for (size_t i = 0; i <= n; i++)
                d[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] - 'A' + 'a') : s[i];
        return d;
}

/* Trim-all: no leading/trailing blanks, inner runs of blanks become one
 * space.  NULL (with *bad set) for values holding CR, LF or NUL-less
 * control characters that would corrupt the header block. */
static char *trimall_dup(const char *s, int *bad)
{
        size_t n = strlen(s), o = 0;
        char *d = malloc(n + 1);
        int pending_space = 0;

        if (!d)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char)s[i];
                if (c == ' ' || c == '\t') {
                        pending_space = o > 0;
                        continue;
                }
                if (c < 32 || c == 127) {
                        free(d);
                        *bad = 1;
                        return NULL;
                }
                if (pending_space)
                        d[o++] = ' ';
                pending_space = 0;
                d[o++] = (char)c;
        }
        d[o] = '\0';
        return d;
}

static int amz_date_valid(const char *d)
{
        if (!d || strlen(d) != 16 || d[8] != 'T' || d[15] != 'Z')
                return 0;
        for (int i = 0; i < 15; i++)
                if (i != 8 && (d[i] < '0' || d[i] > '9'))
                        return 0;
        return 1;
}

static int nonempty(const char *s)
{
        return s && s[0];
}

/* Signer-owned headers the caller must not pass. */
static int reserved_header(const char *lname)
{
        return !strcmp(lname, "x-amz-date") || !strcmp(lname, "x-amz-content-sha256") ||
               !strcmp(lname, "x-amz-security-token") || !strcmp(lname, "authorization");
}

void ks_sigv4_output_free(ks_sigv4_output_t *out)
{
        if (!out)
                return;
        for (int i = 0; i < out->nadd; i++)
                free((char *)out->add[i].value);
        free(out->canonical_request);
        free(out->string_to_sign);
        free(out->signed_headers);
        memset(out, 0, sizeof(*out));
}

static ks_err_t add_out_header(ks_sigv4_output_t *out, const char *name, const char *value)
{
        char *v = strdup(value);
        if (!v)
                return KS_ERR__NOMEM;
        out->add[out->nadd].name = name;
        out->add[out->nadd].value = v;
        out->nadd++;
        return KS_ERR_NONE;
}

ks_err_t ks_sigv4_sign(const ks_sigv4_input_t *in, ks_sigv4_output_t *out)
{
        const int has_token = nonempty(in->session_token);
        const size_t nh = in->nheaders + 2 + (has_token ? 1 : 0);
        canon_hdr_t *h = calloc(nh, sizeof(*h));
        ks_err_t err = KS_ERR__INVALID_ARG;
        sb_t cr = {0}, sts = {0}, sh = {0}, auth = {0};
        char scope[256], cr_hash[65];
        unsigned char k1[32], k2[32], k3[32], k4[32], sig[32];
        int have_host = 0, bad = 0;
        size_t i;

        memset(out, 0, sizeof(*out));
        if (!h)
                return KS_ERR__NOMEM;
        if (!nonempty(in->method) || !in->path || in->path[0] != '/' || !nonempty(in->payload_hash) ||
            !nonempty(in->region) || !nonempty(in->service) || !nonempty(in->access_key) || !nonempty(in->secret_key) ||
            !amz_date_valid(in->amz_date) || (in->nheaders && !in->headers))
                goto out;
        if (snprintf(scope, sizeof(scope), "%.8s/%s/%s/aws4_request", in->amz_date, in->region, in->service) >=
            (int)sizeof(scope))
                goto out;

        /* Collect the headers to sign: the caller's, then the signer's own. */
        for (i = 0; i < in->nheaders; i++) {
                const char *name = in->headers[i].name, *value = in->headers[i].value;
                if (!nonempty(name) || !value)
                        goto out;
                for (const char *p = name; *p; p++)
                        if (!token_char((unsigned char)*p))
                                goto out;
                h[i].name = lower_dup(name);
                h[i].value = trimall_dup(value, &bad);
                h[i].order = i;
                if (bad)
                        goto out;
                if (!h[i].name || !h[i].value) {
                        err = KS_ERR__NOMEM;
                        goto out;
                }
                if (reserved_header(h[i].name))
                        goto out;
                if (!strcmp(h[i].name, "host"))
                        have_host = 1;
        }
        if (!have_host)
                goto out;
        {
                const char *own[3][2] = {{"x-amz-date", in->amz_date},
                                         {"x-amz-content-sha256", in->payload_hash},
                                         {"x-amz-security-token", in->session_token}};
                for (int k = 0; k < 2 + has_token; k++, i++) {
                        h[i].name = strdup(own[k][0]);
                        h[i].value = trimall_dup(own[k][1], &bad);
                        h[i].order = i;
                        if (bad)
                                goto out;
                        if (!h[i].name || !h[i].value) {
                                err = KS_ERR__NOMEM;
                                goto out;
                        }
                }
        }
        qsort(h, nh, sizeof(*h), cmp_canon_hdr);

        /* Canonical request. */
        sb_add(&cr, in->method);
        sb_addc(&cr, '\n');
        sb_add(&cr, in->path);
        sb_addc(&cr, '\n');
        sb_add(&cr, in->query ? in->query : "");
        sb_addc(&cr, '\n');
        for (i = 0; i < nh; i++) {
                if (i > 0 && !strcmp(h[i].name, h[i - 1].name)) {
                        /* Repeated name: values joined with ',' on one line. */
                        cr.len -= cr.len ? 1 : 0; /* drop the '\n' just written */
                        sb_addc(&cr, ',');
                } else {
                        sb_add(&cr, h[i].name);
                        sb_addc(&cr, ':');
                        if (sh.len)
                                sb_addc(&sh, ';');
                        sb_add(&sh, h[i].name);
                }
                sb_add(&cr, h[i].value);
                sb_addc(&cr, '\n');
        }
        sb_addc(&cr, '\n');
        sb_add(&cr, sh.p ? sh.p : "");
        sb_addc(&cr, '\n');
        sb_add(&cr, in->payload_hash);
        if (cr.oom || sh.oom) {
                err = KS_ERR__NOMEM;
                goto out;
        }

        /* String to sign. */
        ks_sigv4_sha256_hex(cr.p, cr.len, cr_hash);
        sb_add(&sts, "AWS4-HMAC-SHA256\n");
        sb_add(&sts, in->amz_date);
        sb_addc(&sts, '\n');
        sb_add(&sts, scope);
        sb_addc(&sts, '\n');
        sb_add(&sts, cr_hash);
        if (sts.oom) {
                err = KS_ERR__NOMEM;
                goto out;
        }

        /* Signing key and signature. */
        {
                char date8[9], *kstr;
                size_t sklen = strlen(in->secret_key);
                memcpy(date8, in->amz_date, 8);
                date8[8] = '\0';
                kstr = malloc(sklen + 5);
                if (!kstr) {
                        err = KS_ERR__NOMEM;
                        goto out;
                }
                memcpy(kstr, "AWS4", 4);
                memcpy(kstr + 4, in->secret_key, sklen + 1);
                int rc = hmac_sha256(kstr, sklen + 4, date8, k1);
                OPENSSL_cleanse(kstr, sklen + 4);
                free(kstr);
                if (rc || hmac_sha256(k1, 32, in->region, k2) || hmac_sha256(k2, 32, in->service, k3) ||
                    hmac_sha256(k3, 32, "aws4_request", k4) || hmac_sha256(k4, 32, sts.p, sig)) {
                        err = KS_ERR__NOMEM;
                        goto out;
                }
                to_hex(sig, 32, out->signature);
        }

        sb_add(&auth, "AWS4-HMAC-SHA256 Credential=");
        sb_add(&auth, in->access_key);
        sb_addc(&auth, '/');
        sb_add(&auth, scope);
        sb_add(&auth, ", SignedHeaders=");
        sb_add(&auth, sh.p);
        sb_add(&auth, ", Signature=");
        sb_add(&auth, out->signature);
        if (auth.oom) {
                err = KS_ERR__NOMEM;
                goto out;
        }

        err = add_out_header(out, "X-Amz-Date", in->amz_date);
        if (!err)
                err = add_out_header(out, "X-Amz-Content-SHA256", in->payload_hash);
        if (!err && has_token)
                err = add_out_header(out, "X-Amz-Security-Token", in->session_token);
        if (!err)
                err = add_out_header(out, "Authorization", auth.p);
        if (err)
                goto out;
        out->canonical_request = sb_take(&cr);
        out->string_to_sign = sb_take(&sts);
        out->signed_headers = sb_take(&sh);
        err = KS_ERR_NONE;
out:
        OPENSSL_cleanse(k1, sizeof(k1));
        OPENSSL_cleanse(k2, sizeof(k2));
        OPENSSL_cleanse(k3, sizeof(k3));
        OPENSSL_cleanse(k4, sizeof(k4));
        for (i = 0; i < nh; i++) {
                free(h[i].name);
                free(h[i].value);
        }
        free(h);
        free(cr.p);
        free(sts.p);
        free(sh.p);
        free(auth.p);
        if (err)
                ks_sigv4_output_free(out);
        return err;
}
