/*
 * err.h — the one error type of Kafscale.
 *
 * ks_err_t values >= -1 are Kafka wire error codes exactly as they travel in
 * responses (KS_ERR_NONE = 0, KS_ERR_UNKNOWN_TOPIC_OR_PARTITION = 3, ...; the
 * KS_ERR_<NAME> constants are generated from Apache Kafka's error table into
 * protocol/gen/kafka_errors.h).  Values <= -1000 are local errors that never
 * travel on the wire as such: ks_err_to_wire() is the single place where a
 * local error is mapped to what a client sees.
 */
#ifndef KS_UTIL_ERR_H
#define KS_UTIL_ERR_H

#include <stdint.h>

#include "protocol/gen/kafka_errors.h"

typedef int32_t ks_err_t;

/* Local errors (never sent as-is). */
enum {
        KS_ERR__BEGIN        = -1000,
        KS_ERR__PARSE        = -1001, /* malformed input */
        KS_ERR__NOMEM        = -1002, /* allocation failed */
        KS_ERR__IO           = -1003, /* I/O failed (errno logged where it failed) */
        KS_ERR__TIMEOUT      = -1004, /* an operation ran out of time */
        KS_ERR__NOT_FOUND    = -1005, /* no such key/object/record */
        KS_ERR__EXISTS       = -1006, /* already exists */
        KS_ERR__CONFLICT     = -1007, /* a compare (revision/version) failed */
        KS_ERR__INVALID_ARG  = -1008, /* caller passed something invalid */
        KS_ERR__CORRUPT      = -1009, /* stored data failed verification */
        KS_ERR__UNAVAILABLE  = -1010, /* backend unreachable / not ready */
        KS_ERR__CLOSED       = -1011, /* object shut down */
        KS_ERR__LEASE_LOST   = -1012, /* a lease expired or was revoked */
        KS_ERR__TOO_LARGE    = -1013, /* size limit exceeded */
        KS_ERR__END          = -1014,
};

/* Human-readable name of any ks_err_t ("UNKNOWN_TOPIC_OR_PARTITION",
 * "_PARSE", ...).  Never NULL. */
const char *ks_err_name(ks_err_t err);

/* Longer description (Kafka's broker message for wire codes). Never NULL. */
const char *ks_err_str(ks_err_t err);

/* Maps any error to the Kafka wire code a client should see.  Wire codes map
 * to themselves; a local error maps to the closest Kafka code, retriable
 * where a retry can succeed (_TIMEOUT, _UNAVAILABLE, _IO, _CONFLICT ->
 * REQUEST_TIMED_OUT; _LEASE_LOST -> NOT_LEADER_OR_FOLLOWER; _CORRUPT ->
 * CORRUPT_MESSAGE; _TOO_LARGE -> MESSAGE_TOO_LARGE; _PARSE, _INVALID_ARG ->
 * INVALID_REQUEST; anything else -> UNKNOWN_SERVER_ERROR).  Handlers with a
 * more specific answer map before calling this. */
int16_t ks_err_to_wire(ks_err_t err);

static inline int ks_err_is_local(ks_err_t err) { return err <= KS_ERR__BEGIN; }

#endif
