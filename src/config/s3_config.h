/*
 * s3_config.h — the S3 settings (cluster mode's record store) from the
 * environment, into the ks_s3_config_t that ks_objstore_s3_new() takes.
 *
 * | Variable                    | Default                         |
 * |-----------------------------|---------------------------------|
 * | KAFSCALE_S3_BUCKET          | unset: S3 not used              |
 * | KAFSCALE_S3_REGION          | us-east-1                       |
 * | KAFSCALE_S3_ENDPOINT        | unset: AWS (https://s3.<region>.amazonaws.com) |
 * | KAFSCALE_S3_PATH_STYLE      | true when an endpoint is set, else false |
 * | KAFSCALE_S3_ACCESS_KEY      | AWS_ACCESS_KEY_ID               |
 * | KAFSCALE_S3_SECRET_KEY      | AWS_SECRET_ACCESS_KEY           |
 * | KAFSCALE_S3_SESSION_TOKEN   | AWS_SESSION_TOKEN               |
 * | KAFSCALE_S3_CONCURRENCY     | 16 (1-1024)                     |
 * | KAFSCALE_S3_TIMEOUT_MS      | 30000 (100-3600000)             |
 * | KAFSCALE_S3_MAX_RETRIES     | 5 (0-100)                       |
 *
 * Rules (strict; every error names the variables involved and the fix):
 *  - A variable set to the empty string counts as unset.
 *  - Any KAFSCALE_S3_* variable above without KAFSCALE_S3_BUCKET is an
 *    error (no silent fallback to another store).  KAFSCALE_S3_NAMESPACE is
 *    not this module's and is not checked.
 *  - Credentials come as a pair from one source: KAFSCALE_S3_ACCESS_KEY +
 *    KAFSCALE_S3_SECRET_KEY (+ optional KAFSCALE_S3_SESSION_TOKEN) if either
 *    is set, otherwise AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ optional
 *    AWS_SESSION_TOKEN).  Half a pair, a KAFSCALE_S3_SESSION_TOKEN without
 *    the KAFSCALE pair, or no credentials at all is an error.  (Instance
 *    profiles / web identity are not supported.)
 *  - The bucket must be a valid S3 bucket name (3-63 of a-z 0-9 . -, starting
 *    and ending with a letter or digit, not an IP address); with path-style
 *    addressing upper case and '_' are also accepted (legacy buckets).
 *  - The endpoint is scheme://host[:port] (ks_s3_endpoint_parse); virtual-
 *    hosted addressing (PATH_STYLE=false) needs a DNS name, not an IP.
 *
 * Threads: reads the environment; call at start-up, before threads that
 * call setenv().
 */
#ifndef KS_CONFIG_S3_CONFIG_H
#define KS_CONFIG_S3_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#include "config/env.h"
#include "storage/objstore.h"

/* Storage that always suffices for ks_s3_config_from_env(): every string is
 * bounded (bucket 255, region 64, endpoint 512, each credential 2048, token
 * 8192 bytes; longer values are errors). */
#define KS_S3_CONFIG_STORAGE 16384

/* Reads the S3 settings.  The strings of *cfg point into `storage`
 * (storage_len bytes, owned by the caller, which must outlive *cfg; use
 * KS_S3_CONFIG_STORAGE bytes).
 *
 * Returns 0 on success: cfg->bucket is NULL when S3 is not configured
 * (nothing set), otherwise every field is filled and valid for
 * ks_objstore_s3_new().  Returns -1 with a sentence for the operator in err
 * (errlen bytes, always NUL-terminated when errlen > 0); *cfg is then
 * zeroed. */
int ks_s3_config_from_env(ks_s3_config_t *cfg, char *storage, size_t storage_len, char *err, size_t errlen);

/* The same, reading every variable through `lookup` (config/env.h). */
int ks_s3_config_from(ks_s3_config_t *cfg, ks_env_lookup_fn *lookup, void *opaque, char *storage, size_t storage_len,
                      char *err, size_t errlen);

/* Prints the variables above with defaults and meanings, in the format of
 * ks_config_print_help(). */
void ks_s3_config_print_help(FILE *out);

/* 1 if name[0..len) is one of the KAFSCALE_S3_* variables read here (for
 * the unknown-variable warnings of config.c). */
int ks_s3_config_is_var(const char *name, size_t len);

/* One line for the start-up log, secrets left out:
 * "bucket=kafscale region=us-east-1 endpoint=\"http://...\" path_style=true
 *  access_key=AKID... session_token=no concurrency=16 timeout_ms=30000
 *  max_retries=5". */
void ks_s3_config_describe(const ks_s3_config_t *cfg, char *buf, size_t len);

#endif
