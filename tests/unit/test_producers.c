/*
 * test_producers.c — the idempotent-producer rules of log/producers.h,
 * case by case as Apache Kafka's ProducerAppendInfo decides them.
 */
#include <stdint.h>
#include <string.h>

#include "log/producers.h"
#include "test.h"

static char msg[256];

static ks_pbatch_t pb(int32_t first, int32_t last, int64_t off)
{
        return (ks_pbatch_t){ first, last, off, off + (last - first) };
}

/* A producer at epoch 3 that appended `n` batches of 10 records (seq 0..). */
static ks_producer_t producer(int n)
{
        ks_producer_t p;
        memset(&p, 0, sizeof(p));
        p.id = 42;
        p.epoch = -1;
        for (int i = 0; i < n; i++) {
                ks_pbatch_t b = pb(10 * i, 10 * i + 9, 100 + 10 * i);
                ks_producer_apply(&p, 3, &b, 1000 + i);
        }
        return p;
}

TEST(producers_seq_last_wraps)
{
        CHECK_EQ_INT(ks_pseq_last(0, 1), 0);
        CHECK_EQ_INT(ks_pseq_last(5, 10), 14);
        CHECK_EQ_INT(ks_pseq_last(INT32_MAX, 1), INT32_MAX);
        CHECK_EQ_INT(ks_pseq_last(INT32_MAX, 2), 0);
        CHECK_EQ_INT(ks_pseq_last(INT32_MAX - 1, 5), 2);
}

TEST(producers_unknown_producer_any_sequence)
{
        ks_pbatch_t dup;
        CHECK_EQ_INT(ks_producer_check(NULL, 0, 0, 9, &dup, msg, sizeof(msg)), 0);
        CHECK_EQ_INT(ks_producer_check(NULL, 7, 500, 509, &dup, msg, sizeof(msg)), 0);
        ks_producer_t fresh = producer(0); /* known id, no epoch yet */
        CHECK_EQ_INT(ks_producer_check(&fresh, 0, 77, 80, &dup, msg, sizeof(msg)), 0);
}

TEST(producers_in_sequence_and_gap)
{
        ks_producer_t p = producer(2); /* last seq 19 */
        ks_pbatch_t dup;
        CHECK_EQ_INT(ks_producer_check(&p, 3, 20, 29, &dup, msg, sizeof(msg)), 0);
        CHECK_EQ_INT(ks_producer_check(&p, 3, 21, 29, &dup, msg, sizeof(msg)), KS_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER);
        CHECK(strstr(msg, "Out of order") != NULL);
        CHECK_EQ_INT(ks_producer_check(&p, 3, 30, 39, &dup, msg, sizeof(msg)), KS_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER);
        /* A sequence before the remembered ones that is not a duplicate. */
        CHECK_EQ_INT(ks_producer_check(&p, 3, 5, 9, &dup, msg, sizeof(msg)), KS_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER);
}

TEST(producers_duplicate_of_each_remembered_batch)
{
        ks_producer_t p = producer(7); /* remembers batches 2..6 */
        CHECK_EQ_INT(p.nbatches, KS_PRODUCER_BATCHES);
        ks_pbatch_t dup;
        for (int i = 2; i < 7; i++) {
                memset(&dup, 0, sizeof(dup));
                CHECK_EQ_INT(ks_producer_check(&p, 3, 10 * i, 10 * i + 9, &dup, msg, sizeof(msg)), KS_ERR__EXISTS);
                CHECK_EQ_INT(dup.first_offset, 100 + 10 * i);
                CHECK_EQ_INT(dup.last_offset, 100 + 10 * i + 9);
        }
        /* Forgotten (older than five batches): out of order, as in Kafka. */
        CHECK_EQ_INT(ks_producer_check(&p, 3, 10, 19, &dup, msg, sizeof(msg)), KS_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER);
        /* Same first sequence, other length: not a duplicate. */
        CHECK_EQ_INT(ks_producer_check(&p, 3, 60, 65, &dup, msg, sizeof(msg)), KS_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER);
}

TEST(producers_epochs)
{
        ks_producer_t p = producer(3);
        ks_pbatch_t dup;
        CHECK_EQ_INT(ks_producer_check(&p, 2, 30, 39, &dup, msg, sizeof(msg)), KS_ERR_INVALID_PRODUCER_EPOCH);
        CHECK_EQ_INT(ks_producer_check(&p, 4, 30, 39, &dup, msg, sizeof(msg)), KS_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER);
        CHECK_EQ_INT(ks_producer_check(&p, 4, 0, 9, &dup, msg, sizeof(msg)), 0);
        /* A duplicate needs the same epoch. */
        CHECK_EQ_INT(ks_producer_check(&p, 4, 0, 9, &dup, msg, sizeof(msg)), 0);
        ks_pbatch_t b = pb(0, 9, 500);
        ks_producer_apply(&p, 4, &b, 2000);
        CHECK_EQ_INT(p.epoch, 4);
        CHECK_EQ_INT(p.nbatches, 1);
        CHECK_EQ_INT(ks_producer_check(&p, 4, 0, 9, &dup, msg, sizeof(msg)), KS_ERR__EXISTS);
        CHECK_EQ_INT(ks_producer_check(&p, 3, 30, 39, &dup, msg, sizeof(msg)), KS_ERR_INVALID_PRODUCER_EPOCH);
}

TEST(producers_sequence_wraps_to_zero)
{
        ks_producer_t p = producer(0);
        ks_pbatch_t b = pb(INT32_MAX - 9, INT32_MAX, 0);
        ks_producer_apply(&p, 1, &b, 1);
        ks_pbatch_t dup;
        CHECK_EQ_INT(ks_producer_check(&p, 1, 0, 9, &dup, msg, sizeof(msg)), 0);
        CHECK_EQ_INT(ks_producer_check(&p, 1, 1, 9, &dup, msg, sizeof(msg)), KS_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER);
}

TEST(producers_table_sorted_expire_and_cap)
{
        ks_producers_t ps = { 0 };
        int64_t ids[] = { 50, 7, 99, 23, 1 };
        for (int i = 0; i < 5; i++) {
                ks_producer_t *p = ks_producers_upsert(&ps, ids[i]);
                REQUIRE(p != NULL);
                CHECK_EQ_INT(p->epoch, -1);
                p->last_ms = 100 * (i + 1);
        }
        CHECK_EQ_INT(ps.n, 5);
        for (int i = 1; i < ps.n; i++)
                CHECK(ps.v[i - 1].id < ps.v[i].id);
        CHECK(ks_producers_get(&ps, 23) != NULL && ks_producers_get(&ps, 23)->last_ms == 400);
        CHECK(ks_producers_get(&ps, 24) == NULL);
        CHECK(ks_producers_upsert(&ps, 23) == ks_producers_get(&ps, 23)); /* no second entry */
        CHECK_EQ_INT(ps.n, 5);
        ks_producers_expire(&ps, 300); /* 50 (100) and 7 (200) go */
        CHECK_EQ_INT(ps.n, 3);
        CHECK(ks_producers_get(&ps, 50) == NULL && ks_producers_get(&ps, 7) == NULL);
        CHECK(ks_producers_get(&ps, 99) != NULL);
        ks_producers_clear(&ps);
        CHECK_EQ_INT(ps.n, 0);

        /* At the cap the least recently active producer makes room. */
        for (int64_t id = 0; id < KS_PRODUCERS_MAX; id++) {
                ks_producer_t *p = ks_producers_upsert(&ps, id * 2);
                REQUIRE(p != NULL);
                p->last_ms = 10 + (id == 17 ? -5 : id);
        }
        ks_producer_t *p = ks_producers_upsert(&ps, 3);
        REQUIRE(p != NULL);
        CHECK_EQ_INT(ps.n, KS_PRODUCERS_MAX);
        CHECK(ks_producers_get(&ps, 34) == NULL); /* id 17 * 2: the least recent */
        CHECK(ks_producers_get(&ps, 3) != NULL && ks_producers_get(&ps, 4) != NULL);
        for (int i = 1; i < ps.n; i++)
                CHECK(ps.v[i - 1].id < ps.v[i].id);
        ks_producers_clear(&ps);
}
