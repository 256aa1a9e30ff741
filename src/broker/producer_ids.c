/*
 * producer_ids.c — InitProducerId v0-v5 for idempotent producers.
 *
 * A producer without a transactional id asks for a producer id (and
 * epoch) before its first idempotent produce.  Ids are unique across every
 * broker sharing the metadata store: each broker reserves blocks of
 * PRODUCER_ID_BLOCK ids at a time (ks_meta_producer_ids_reserve, a
 * compare-and-swap on one key) and hands them out from memory, as Kafka's
 * brokers do with AllocateProducerIds.
 *
 * A request that carries its current id and epoch (v3+, KIP-360: the
 * producer lost track of a sequence, or a partition answered
 * OUT_OF_ORDER_SEQUENCE_NUMBER) gets the same id with the epoch bumped, so
 * its batches restart at sequence 0 and older in-flight batches of the old
 * epoch are refused (INVALID_PRODUCER_EPOCH); an epoch that cannot grow any
 * more (32767) gets a new id at epoch 0.  Without an id and epoch (v0-v2,
 * or -1/-1) a new id is handed out at epoch 0.
 *
 * Transactions are not supported: a request with a transactional id is
 * answered TRANSACTIONAL_ID_AUTHORIZATION_FAILED, which clients report as a
 * fatal error at once (librdkafka: "Failed to ... transactional id
 * authorization failed"; Java: TransactionalIdAuthorizationException)
 * rather than retrying; FindCoordinator for a transactional id answers the
 * same (groups.c).
 *
 * Runs on a worker: reserving a block talks to the metadata store.
 */
#include <pthread.h>

#include "broker/broker.h"
#include "protocol/gen/kafka_msgs.h"
#include "util/log.h"

#define PRODUCER_ID_BLOCK 1000
#define PRODUCER_EPOCH_MAX 32767 /* int16 */

/* The block this process hands ids out of (one broker per process). */
static pthread_mutex_t ids_mu = PTHREAD_MUTEX_INITIALIZER;
static int64_t ids_next, ids_end; /* [next, end) still free */

/* A new producer id: 0, or the store's error.  BLOCKING when the block is
 * used up. */
static ks_err_t next_producer_id(ks_broker_t *b, int64_t *id)
{
        pthread_mutex_lock(&ids_mu);
        ks_err_t err = 0;
        if (ids_next >= ids_end) {
                int64_t first;
                err = ks_meta_producer_ids_reserve(b->meta, PRODUCER_ID_BLOCK, &first);
                if (!err) {
                        ids_next = first;
                        ids_end = first + PRODUCER_ID_BLOCK;
                        ks_log_info("producer_ids_reserved", "first=%lld count=%d", (long long)first,
                                    PRODUCER_ID_BLOCK);
                }
        }
        if (!err)
                *id = ids_next++;
        pthread_mutex_unlock(&ids_mu);
        return err;
}

static void init_producer_id_work(ks_broker_t *b, ks_req_t *req)
{
        const ks_InitProducerIdRequest *rq = req->request;
        ks_InitProducerIdResponse *resp = ks_msg_new(&ks_InitProducerIdResponse_desc, &req->arena);
        if (!resp) {
                ks_req_close(req, "out of memory");
                return;
        }
        resp->ThrottleTimeMs = 0;
        resp->ProducerId = -1;
        resp->ProducerEpoch = -1;
        if (!ks_str_is_null(rq->TransactionalId)) {
                /* Kafka answers an empty transactional id INVALID_REQUEST. */
                resp->ErrorCode = rq->TransactionalId.len == 0 ? KS_ERR_INVALID_REQUEST
                                                                : KS_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
                ks_log_debug("init_producer_id_refused", "reason=transactions_not_supported transactional_id=\"%.*s\"",
                             rq->TransactionalId.len, rq->TransactionalId.ptr);
                ks_req_respond(req, resp);
                return;
        }
        if (rq->ProducerId >= 0 && rq->ProducerEpoch >= 0 && rq->ProducerEpoch < PRODUCER_EPOCH_MAX - 1) {
                resp->ProducerId = rq->ProducerId;
                resp->ProducerEpoch = (int16_t)(rq->ProducerEpoch + 1);
                ks_req_respond(req, resp);
                return;
        }
        int64_t id;
        ks_err_t err = next_producer_id(b, &id);
        if (err) {
                /* Retriable for the client: it asks again. */
                ks_log_warn("producer_id_reserve_failed", "err=%s", ks_err_name(err));
                resp->ErrorCode = KS_ERR_COORDINATOR_NOT_AVAILABLE;
        } else {
                resp->ProducerId = id;
                resp->ProducerEpoch = 0;
        }
        ks_req_respond(req, resp);
}

void ks_handle_init_producer_id(ks_broker_t *b, ks_req_t *req)
{
        ks_broker_offload(b, req, init_producer_id_work);
}
