#include "util/err.h"

static const struct {
        ks_err_t err;
        const char *name;
        const char *desc;
} local_errors[] = {
        { KS_ERR__PARSE, "_PARSE", "Malformed input" },
        { KS_ERR__NOMEM, "_NOMEM", "Out of memory" },
        { KS_ERR__IO, "_IO", "I/O error" },
        { KS_ERR__TIMEOUT, "_TIMEOUT", "Operation timed out" },
        { KS_ERR__NOT_FOUND, "_NOT_FOUND", "Not found" },
        { KS_ERR__EXISTS, "_EXISTS", "Already exists" },
        { KS_ERR__CONFLICT, "_CONFLICT", "Concurrent modification (compare failed)" },
        { KS_ERR__INVALID_ARG, "_INVALID_ARG", "Invalid argument" },
        { KS_ERR__CORRUPT, "_CORRUPT", "Stored data failed verification" },
        { KS_ERR__UNAVAILABLE, "_UNAVAILABLE", "Backend unavailable" },
        { KS_ERR__CLOSED, "_CLOSED", "Shut down" },
        { KS_ERR__LEASE_LOST, "_LEASE_LOST", "Lease lost" },
        { KS_ERR__TOO_LARGE, "_TOO_LARGE", "Size limit exceeded" },
};

#define N_LOCAL (sizeof(local_errors) / sizeof(local_errors[0]))

const char *ks_err_name(ks_err_t err)
{
        if (ks_err_is_local(err)) {
                for (unsigned i = 0; i < N_LOCAL; i++)
                        if (local_errors[i].err == err)
                                return local_errors[i].name;
                return "_UNKNOWN_LOCAL";
        }
        const char *n = ks_kafka_err_name(err);
        return n ? n : "UNKNOWN_ERROR_CODE";
}

const char *ks_err_str(ks_err_t err)
{
        if (ks_err_is_local(err)) {
                for (unsigned i = 0; i < N_LOCAL; i++)
                        if (local_errors[i].err == err)
                                return local_errors[i].desc;
                return "Unknown local error";
        }
        const char *m = ks_kafka_err_msg(err);
        return m ? m : "Unknown error code";
}

int16_t ks_err_to_wire(ks_err_t err)
{
        if (!ks_err_is_local(err))
                return (int16_t)err;
        switch (err) {
        case KS_ERR__TIMEOUT:
        case KS_ERR__UNAVAILABLE:
        case KS_ERR__IO:
        case KS_ERR__CONFLICT:
                return KS_ERR_REQUEST_TIMED_OUT;
        case KS_ERR__LEASE_LOST:
                return KS_ERR_NOT_LEADER_OR_FOLLOWER;
        case KS_ERR__CORRUPT:
                return KS_ERR_CORRUPT_MESSAGE;
        case KS_ERR__TOO_LARGE:
                return KS_ERR_MESSAGE_TOO_LARGE;
        case KS_ERR__PARSE:
        case KS_ERR__INVALID_ARG:
                return KS_ERR_INVALID_REQUEST;
        default:
                return KS_ERR_UNKNOWN_SERVER_ERROR;
        }
}
