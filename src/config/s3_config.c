/*
 * s3_config.c — KAFSCALE_S3_* settings (see s3_config.h for the rules).
 */
#include "config/s3_config.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct s3_var {
        const char *name;
        const char *def;
        const char *help;
} s3_var_t;

/* Keep s3_config.h's table and README.md in step with this. */
static const s3_var_t s3_vars[] = {
    {"KAFSCALE_S3_BUCKET", "", "Bucket holding the records (cluster mode); setting it selects S3"},
    {"KAFSCALE_S3_REGION", "us-east-1", "Region of the bucket (signing scope)"},
    {"KAFSCALE_S3_ENDPOINT", "", "S3-compatible endpoint, http(s)://host[:port] (default: AWS)"},
    {"KAFSCALE_S3_PATH_STYLE", "",
     "true: <endpoint>/<bucket>/<key>; false: <bucket>.<host>/<key> "
     "(default: true with an endpoint, else false)"},
    {"KAFSCALE_S3_ACCESS_KEY", "", "Access key id (default: AWS_ACCESS_KEY_ID)"},
    {"KAFSCALE_S3_SECRET_KEY", "", "Secret access key (default: AWS_SECRET_ACCESS_KEY)"},
    {"KAFSCALE_S3_SESSION_TOKEN", "", "Session token of temporary credentials (default: AWS_SESSION_TOKEN)"},
    {"KAFSCALE_S3_CONCURRENCY", "16", "Most S3 requests in flight at once (1-1024)"},
    {"KAFSCALE_S3_TIMEOUT_MS", "30000", "Time limit of one S3 request attempt (100-3600000)"},
    {"KAFSCALE_S3_MAX_RETRIES", "5", "Retries of a failed S3 request, with jittered backoff (0-100)"},
};

#define N_S3_VARS (sizeof(s3_vars) / sizeof(s3_vars[0]))

#define MAX_BUCKET 255
#define MAX_REGION 64
#define MAX_ENDPOINT 512
#define MAX_KEY 2048
#define MAX_TOKEN 8192

/* Where this parse reads its variables. */
typedef struct env {
        ks_env_lookup_fn *lookup;
        void *opaque;
} env_t;

/* A variable's value; "" counts as unset (NULL). */
static const char *env(const env_t *e, const char *name)
{
        const char *v = e->lookup(e->opaque, name);
        return v && v[0] ? v : NULL;
}

typedef struct arena {
        char *p;
        size_t len, used;
} arena_t;

static const char *keep(arena_t *a, const char *s)
{
        size_t n = strlen(s) + 1;
        if (n > a->len - a->used)
                return NULL;
        char *d = a->p + a->used;
        memcpy(d, s, n);
        a->used += n;
        return d;
}

static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
        if (err && errlen) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(err, errlen, fmt, ap);
                va_end(ap);
        }
        return -1;
}

static int parse_int(const env_t *e, const char *name, const char *def, long lo, long hi, int *out, char *err,
                     size_t errlen)
{
        const char *s = env(e, name);
        char *end;
        if (!s)
                s = def;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno || end == s || *end || !isdigit((unsigned char)s[0]) || v < lo || v > hi)
                return fail(err, errlen, "%s=\"%s\" is not valid: expected an integer from %ld to %ld", name, s, lo,
                            hi);
        *out = (int)v;
        return 0;
}

static int parse_bool(const char *name, const char *s, int *out, char *err, size_t errlen)
{
        if (!strcmp(s, "1") || !strcasecmp(s, "true") || !strcasecmp(s, "yes") || !strcasecmp(s, "on")) {
                *out = 1;
                return 0;
        }
        if (!strcmp(s, "0") || !strcasecmp(s, "false") || !strcasecmp(s, "no") || !strcasecmp(s, "off")) {
                *out = 0;
                return 0;
        }
        return fail(err, errlen, "%s=\"%s\" is not valid: expected true/false (or 1/0)", name, s);
}

/* Printable ASCII without blanks: what may travel in a header. */
static int credential_ok(const char *s, size_t max)
{
        size_t n = strlen(s);
        if (n == 0 || n > max)
                return 0;
        for (size_t i = 0; i < n; i++)
                if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
                        return 0;
        return 1;
}

static int looks_like_ipv4(const char *s)
{
        int dots = 0;
        for (; *s; s++) {
                if (*s == '.')
                        dots++;
                else if (!isdigit((unsigned char)*s))
                        return 0;
        }
        return dots == 3;
}

/* NULL if the bucket name is acceptable, else why not. */
static const char *bucket_problem(const char *b, int path_style)
{
        size_t n = strlen(b);
        if (n < 3 || n > (path_style ? MAX_BUCKET : 63))
                return path_style ? "must be 3 to 255 characters" : "must be 3 to 63 characters";
        if (!isalnum((unsigned char)b[0]) || !isalnum((unsigned char)b[n - 1]))
                return "must start and end with a letter or digit";
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char)b[i];
                if (islower(c) || isdigit(c) || c == '.' || c == '-')
                        continue;
                if (path_style && (isupper(c) || c == '_'))
                        continue;
                if (isupper(c) || c == '_')
                        return "may hold upper case or '_' only with path-style addressing "
                               "(KAFSCALE_S3_PATH_STYLE=true)";
                return "may only contain a-z, 0-9, '.' and '-'";
        }
        if (strstr(b, ".."))
                return "must not contain \"..\"";
        if (looks_like_ipv4(b))
                return "must not look like an IP address";
        return NULL;
}

int ks_s3_config_from_env(ks_s3_config_t *cfg, char *storage, size_t storage_len, char *err, size_t errlen)
{
        return ks_s3_config_from(cfg, ks_env_getenv, NULL, storage, storage_len, err, errlen);
}

int ks_s3_config_from(ks_s3_config_t *cfg, ks_env_lookup_fn *lookup, void *opaque, char *storage, size_t storage_len,
                      char *err, size_t errlen)
{
        const env_t en = { lookup, opaque }, *e = &en;
        arena_t a = {storage, storage_len, 0};
        ks_s3_config_t c = {0};
        ks_s3_endpoint_t ep;
        char why[192];

        memset(cfg, 0, sizeof(*cfg));
        if (err && errlen)
                err[0] = '\0';

        const char *bucket = env(e, "KAFSCALE_S3_BUCKET");
        if (!bucket) {
                for (size_t i = 1; i < N_S3_VARS; i++)
                        if (env(e, s3_vars[i].name))
                                return fail(err, errlen,
                                            "%s is set but KAFSCALE_S3_BUCKET is not: set KAFSCALE_S3_BUCKET to "
                                            "store records in S3, or unset %s",
                                            s3_vars[i].name, s3_vars[i].name);
                return 0; /* S3 not configured */
        }

        /* Endpoint and addressing first: the bucket rules depend on them. */
        const char *endpoint = env(e, "KAFSCALE_S3_ENDPOINT");
        if (endpoint && strlen(endpoint) > MAX_ENDPOINT)
                return fail(err, errlen, "KAFSCALE_S3_ENDPOINT is longer than %d characters", MAX_ENDPOINT);
        if (endpoint && ks_s3_endpoint_parse(endpoint, &ep, why, sizeof(why)) != KS_ERR_NONE)
                return fail(err, errlen, "KAFSCALE_S3_ENDPOINT=\"%s\" is not valid: it %s (e.g. http://127.0.0.1:9000)",
                            endpoint, why);
        const char *ps = env(e, "KAFSCALE_S3_PATH_STYLE");
        c.path_style = endpoint != NULL;
        if (ps && parse_bool("KAFSCALE_S3_PATH_STYLE", ps, &c.path_style, err, errlen))
                return -1;
        if (endpoint && !c.path_style && ep.is_ip)
                return fail(err, errlen,
                            "KAFSCALE_S3_PATH_STYLE=false needs a DNS name in KAFSCALE_S3_ENDPOINT, not the IP "
                            "address in \"%s\": use path-style addressing (KAFSCALE_S3_PATH_STYLE=true) or a host name",
                            endpoint);

        const char *bp = bucket_problem(bucket, c.path_style);
        if (bp)
                return fail(err, errlen, "KAFSCALE_S3_BUCKET=\"%.255s\" is not a valid bucket name: it %s", bucket, bp);

        const char *region = env(e, "KAFSCALE_S3_REGION");
        if (!region)
                region = "us-east-1";
        size_t rl = strlen(region);
        int region_ok = rl <= MAX_REGION;
        for (size_t i = 0; i < rl && region_ok; i++)
                region_ok = isalnum((unsigned char)region[i]) || region[i] == '-' || region[i] == '_';
        if (!region_ok)
                return fail(err, errlen,
                            "KAFSCALE_S3_REGION=\"%.64s\" is not valid: expected a region name such as us-east-1 "
                            "(letters, digits, '-', at most %d characters)",
                            region, MAX_REGION);

        /* Credentials: one pair from one source. */
        const char *kak = env(e, "KAFSCALE_S3_ACCESS_KEY"), *ksk = env(e, "KAFSCALE_S3_SECRET_KEY");
        const char *kst = env(e, "KAFSCALE_S3_SESSION_TOKEN");
        const char *ak, *sk, *st, *ak_name, *sk_name, *st_name;
        if (kak || ksk) {
                if (!kak || !ksk)
                        return fail(err, errlen,
                                    "%s is set but %s is not: set both KAFSCALE_S3_ACCESS_KEY and "
                                    "KAFSCALE_S3_SECRET_KEY (or neither, to use AWS_ACCESS_KEY_ID and "
                                    "AWS_SECRET_ACCESS_KEY)",
                                    kak ? "KAFSCALE_S3_ACCESS_KEY" : "KAFSCALE_S3_SECRET_KEY",
                                    kak ? "KAFSCALE_S3_SECRET_KEY" : "KAFSCALE_S3_ACCESS_KEY");
                ak = kak, sk = ksk, st = kst;
                ak_name = "KAFSCALE_S3_ACCESS_KEY", sk_name = "KAFSCALE_S3_SECRET_KEY",
                st_name = "KAFSCALE_S3_SESSION_TOKEN";
        } else {
                if (kst)
                        return fail(err, errlen,
                                    "KAFSCALE_S3_SESSION_TOKEN is set but KAFSCALE_S3_ACCESS_KEY and "
                                    "KAFSCALE_S3_SECRET_KEY are not: a session token belongs to its key pair");
                ak = env(e, "AWS_ACCESS_KEY_ID"), sk = env(e, "AWS_SECRET_ACCESS_KEY");
                st = env(e, "AWS_SESSION_TOKEN");
                ak_name = "AWS_ACCESS_KEY_ID", sk_name = "AWS_SECRET_ACCESS_KEY", st_name = "AWS_SESSION_TOKEN";
                if (!ak && !sk)
                        return fail(err, errlen,
                                    "KAFSCALE_S3_BUCKET is set but no S3 credentials are: set KAFSCALE_S3_ACCESS_KEY "
                                    "and KAFSCALE_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)");
                if (!ak || !sk)
                        return fail(err, errlen,
                                    "%s is set but %s is not: set both (or KAFSCALE_S3_ACCESS_KEY and "
                                    "KAFSCALE_S3_SECRET_KEY)",
                                    ak ? "AWS_ACCESS_KEY_ID" : "AWS_SECRET_ACCESS_KEY",
                                    ak ? "AWS_SECRET_ACCESS_KEY" : "AWS_ACCESS_KEY_ID");
        }
        if (!credential_ok(ak, MAX_KEY))
                return fail(err, errlen, "%s is not valid: expected printable characters without blanks, at most %d",
                            ak_name, MAX_KEY);
        if (!credential_ok(sk, MAX_KEY))
                return fail(err, errlen, "%s is not valid: expected printable characters without blanks, at most %d",
                            sk_name, MAX_KEY);
        if (st && !credential_ok(st, MAX_TOKEN))
                return fail(err, errlen, "%s is not valid: expected printable characters without blanks, at most %d",
                            st_name, MAX_TOKEN);

        if (parse_int(e, "KAFSCALE_S3_CONCURRENCY", "16", 1, 1024, &c.concurrency, err, errlen) ||
            parse_int(e, "KAFSCALE_S3_TIMEOUT_MS", "30000", 100, 3600000, &c.timeout_ms, err, errlen) ||
            parse_int(e, "KAFSCALE_S3_MAX_RETRIES", "5", 0, 100, &c.max_retries, err, errlen))
                return -1;

        c.bucket = keep(&a, bucket);
        c.region = keep(&a, region);
        c.endpoint = endpoint ? keep(&a, endpoint) : NULL;
        c.access_key = keep(&a, ak);
        c.secret_key = keep(&a, sk);
        c.session_token = st ? keep(&a, st) : NULL;
        if (!c.bucket || !c.region || (endpoint && !c.endpoint) || !c.access_key || !c.secret_key ||
            (st && !c.session_token))
                return fail(err, errlen, "the S3 settings need %zu bytes of storage, %zu were given (internal error)",
                            strlen(bucket) + strlen(region) + (endpoint ? strlen(endpoint) : 0) + strlen(ak) +
                                strlen(sk) + (st ? strlen(st) : 0) + 6,
                            storage_len);
        *cfg = c;
        return 0;
}

void ks_s3_config_print_help(FILE *out)
{
        for (size_t i = 0; i < N_S3_VARS; i++)
                fprintf(out, "  %-38s default %-18s %s\n", s3_vars[i].name,
                        s3_vars[i].def[0] ? s3_vars[i].def : "(unset)", s3_vars[i].help);
}

int ks_s3_config_is_var(const char *name, size_t len)
{
        for (size_t i = 0; i < N_S3_VARS; i++)
                if (strlen(s3_vars[i].name) == len && !strncmp(s3_vars[i].name, name, len))
                        return 1;
        return 0;
}

void ks_s3_config_describe(const ks_s3_config_t *cfg, char *buf, size_t len)
{
        if (!len)
                return;
        if (!cfg->bucket) {
                snprintf(buf, len, "s3=unconfigured");
                return;
        }
        /* Access key ids are not secret, but only a prefix is needed to tell
         * which key is in use. */
        const char *ak = cfg->access_key ? cfg->access_key : "";
        snprintf(buf, len,
                 "bucket=%s region=%s endpoint=\"%s\" path_style=%s access_key=%.4s... session_token=%s "
                 "concurrency=%d timeout_ms=%d max_retries=%d",
                 cfg->bucket, cfg->region ? cfg->region : "", cfg->endpoint ? cfg->endpoint : "(AWS)",
                 cfg->path_style ? "true" : "false", ak, cfg->session_token ? "yes" : "no", cfg->concurrency,
                 cfg->timeout_ms, cfg->max_retries);
}
