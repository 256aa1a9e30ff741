/*
 * producers.h — the idempotent-producer state of one partition.
 *
 * For every producer id that wrote to the partition: its current producer
 * epoch and its last KS_PRODUCER_BATCHES batches (sequence range and the
 * offsets they were given).  A produce checks each idempotent batch against
 * it before the batch gets offsets, with Apache Kafka's rules
 * (ProducerStateManager / ProducerAppendInfo):
 *
 *  - an epoch older than the producer's current one: INVALID_PRODUCER_EPOCH;
 *  - the same epoch and the sequence range of one of the remembered
 *    batches: a duplicate (a retry of a batch already appended) — nothing
 *    is appended, the client is answered with that batch's offsets;
 *  - a newer epoch must start at sequence 0 (unless the producer is
 *    unknown): else OUT_OF_ORDER_SEQUENCE_NUMBER;
 *  - the same epoch must continue at last sequence + 1 (INT32_MAX wraps to
 *    0): else OUT_OF_ORDER_SEQUENCE_NUMBER;
 *  - a producer the partition has no state for is accepted at any sequence
 *    (Kafka since KIP-360: its state may have expired or been deleted with
 *    its records; the client recovers by bumping its epoch).
 *
 * The state is not thread-safe: the partition's lock guards it.  It is
 * rebuilt from the segment manifest (each committed segment records the
 * last batches of every producer that wrote in it, meta/metadata.h), so it
 * survives restarts and changes of owner.
 */
#ifndef KS_LOG_PRODUCERS_H
#define KS_LOG_PRODUCERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

#define KS_PRODUCER_BATCHES 5              /* batches remembered per producer (Kafka: 5 in flight) */
#define KS_PRODUCER_EXPIRATION_MS 86400000 /* Kafka's producer.id.expiration.ms default: 1 day */
#define KS_PRODUCERS_MAX 10000             /* producers per partition; the least recent goes first */

/* One appended batch of a producer. */
typedef struct ks_pbatch {
        int32_t first_seq, last_seq;
        int64_t first_offset, last_offset;
} ks_pbatch_t;

/* A producer's state: batches oldest first. */
typedef struct ks_producer {
        int64_t id;
        int16_t epoch;
        int nbatches;
        ks_pbatch_t batches[KS_PRODUCER_BATCHES];
        int64_t last_ms; /* wall clock of its last append (expiration) */
} ks_producer_t;

typedef struct ks_producers {
        ks_producer_t *v; /* sorted by id */
        int n, cap;
} ks_producers_t;

/* Last sequence of a batch of `count` records starting at `first`
 * (sequences wrap from INT32_MAX to 0). */
int32_t ks_pseq_last(int32_t first, int32_t count);

/* Checks one batch of producer (id, epoch) with sequences [first_seq,
 * last_seq] against `cur` (the producer's state; NULL if unknown).
 * Returns 0 if it may be appended; KS_ERR__EXISTS if it duplicates a
 * remembered batch (*dup is that batch); KS_ERR_INVALID_PRODUCER_EPOCH or
 * KS_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER otherwise (msg says why). */
ks_err_t ks_producer_check(const ks_producer_t *cur, int16_t epoch, int32_t first_seq, int32_t last_seq,
                           ks_pbatch_t *dup, char *msg, size_t msglen);

/* Applies an appended batch to a producer's state (a newer epoch forgets
 * the batches of the old one). */
void ks_producer_apply(ks_producer_t *p, int16_t epoch, const ks_pbatch_t *b, int64_t now_ms);

/* The state of producer `id`, or NULL. */
ks_producer_t *ks_producers_get(ks_producers_t *ps, int64_t id);

/* The state of producer `id`, created empty (epoch -1) if absent; NULL if
 * memory ran out.  At KS_PRODUCERS_MAX the least recently active producer
 * is forgotten to make room. */
ks_producer_t *ks_producers_upsert(ks_producers_t *ps, int64_t id);

/* Forgets producers inactive since before `older_than_ms`. */
void ks_producers_expire(ks_producers_t *ps, int64_t older_than_ms);

void ks_producers_clear(ks_producers_t *ps);

#endif
