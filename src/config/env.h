/*
 * env.h — where configuration variables are read from.
 *
 * The parsers (config.h, s3_config.h) read every variable through a lookup
 * function, so tests and fuzzers can hand them values without touching the
 * process environment; the broker passes ks_env_getenv.
 */
#ifndef KS_CONFIG_ENV_H
#define KS_CONFIG_ENV_H

/* The value of variable `name`, or NULL if it is not set.  The string must
 * stay valid until the parser returns. */
typedef const char *(ks_env_lookup_fn)(void *opaque, const char *name);

/* The process environment (getenv); opaque unused. */
const char *ks_env_getenv(void *opaque, const char *name);

#endif
