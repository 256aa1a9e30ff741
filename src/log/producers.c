/*
 * producers.c — see producers.h.
 */
#include "log/producers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int32_t ks_pseq_last(int32_t first, int32_t count)
{
        int64_t last = (int64_t)first + count - 1;
        return (int32_t)(last > INT32_MAX ? last - INT32_MAX - 1 : last);
}

static bool in_sequence(int32_t last, int32_t next)
{
        return (int64_t)next == (int64_t)last + 1 || (next == 0 && last == INT32_MAX);
}

ks_err_t ks_producer_check(const ks_producer_t *cur, int16_t epoch, int32_t first_seq, int32_t last_seq,
                           ks_pbatch_t *dup, char *msg, size_t msglen)
{
        if (!cur || cur->epoch < 0)
                return 0; /* unknown producer: any sequence (Kafka since KIP-360) */
        if (epoch < cur->epoch) {
                snprintf(msg, msglen, "Producer epoch %d is older than the current epoch %d of producer %lld.", epoch,
                         cur->epoch, (long long)cur->id);
                return KS_ERR_INVALID_PRODUCER_EPOCH;
        }
        if (epoch > cur->epoch) {
                if (first_seq != 0) {
                        snprintf(msg, msglen, "A new epoch %d of producer %lld must start at sequence 0, not %d.",
                                 epoch, (long long)cur->id, first_seq);
                        return KS_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER;
                }
                return 0;
        }
        for (int i = 0; i < cur->nbatches; i++) {
                if (cur->batches[i].first_seq == first_seq && cur->batches[i].last_seq == last_seq) {
                        *dup = cur->batches[i];
                        return KS_ERR__EXISTS;
                }
        }
        if (cur->nbatches > 0 && !in_sequence(cur->batches[cur->nbatches - 1].last_seq, first_seq)) {
                snprintf(msg, msglen, "Out of order sequence number for producer %lld: %d (incoming), %d (last "
                         "appended).",
                         (long long)cur->id, first_seq, cur->batches[cur->nbatches - 1].last_seq);
                return KS_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER;
        }
        return 0;
}

void ks_producer_apply(ks_producer_t *p, int16_t epoch, const ks_pbatch_t *b, int64_t now_ms)
{
        if (epoch != p->epoch) {
                p->epoch = epoch;
                p->nbatches = 0;
        }
        if (p->nbatches == KS_PRODUCER_BATCHES) {
                memmove(&p->batches[0], &p->batches[1], (KS_PRODUCER_BATCHES - 1) * sizeof(p->batches[0]));
                p->nbatches--;
        }
        p->batches[p->nbatches++] = *b;
        if (now_ms > p->last_ms)
                p->last_ms = now_ms;
}

/* Index of the first entry with id >= `id`. */
static int lower_bound(const ks_producers_t *ps, int64_t id)
{
        int lo = 0, hi = ps->n;
        while (lo < hi) {
                int mid = lo + (hi - lo) / 2;
                if (ps->v[mid].id < id)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo;
}

ks_producer_t *ks_producers_get(ks_producers_t *ps, int64_t id)
{
        int i = lower_bound(ps, id);
        return i < ps->n && ps->v[i].id == id ? &ps->v[i] : NULL;
}

static void remove_at(ks_producers_t *ps, int i)
{
        memmove(&ps->v[i], &ps->v[i + 1], (size_t)(ps->n - i - 1) * sizeof(ps->v[0]));
        ps->n--;
}

ks_producer_t *ks_producers_upsert(ks_producers_t *ps, int64_t id)
{
        int i = lower_bound(ps, id);
        if (i < ps->n && ps->v[i].id == id)
                return &ps->v[i];
        if (ps->n >= KS_PRODUCERS_MAX) {
                int oldest = 0;
                for (int j = 1; j < ps->n; j++)
                        if (ps->v[j].last_ms < ps->v[oldest].last_ms)
                                oldest = j;
                remove_at(ps, oldest);
                if (oldest < i)
                        i--;
        }
        if (ps->n == ps->cap) {
                int cap = ps->cap ? ps->cap * 2 : 8;
                ks_producer_t *v = realloc(ps->v, (size_t)cap * sizeof(*v));
                if (!v)
                        return NULL;
                ps->v = v;
                ps->cap = cap;
        }
        memmove(&ps->v[i + 1], &ps->v[i], (size_t)(ps->n - i) * sizeof(ps->v[0]));
        ps->n++;
        memset(&ps->v[i], 0, sizeof(ps->v[i]));
        ps->v[i].id = id;
        ps->v[i].epoch = -1;
        return &ps->v[i];
}

void ks_producers_expire(ks_producers_t *ps, int64_t older_than_ms)
{
        int w = 0;
        for (int r = 0; r < ps->n; r++)
                if (ps->v[r].last_ms >= older_than_ms)
                        ps->v[w++] = ps->v[r];
        ps->n = w;
}

void ks_producers_clear(ks_producers_t *ps)
{
        free(ps->v);
        memset(ps, 0, sizeof(*ps));
}
