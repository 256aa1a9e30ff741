/*
 * wbuf.c — segmented output buffer (see wbuf.h).
 *
 * Owned bytes are appended to the newest chunk; consecutive owned appends
 * extend the same segment.  Each chunk counts the live segments that point
 * into it and is freed (or, for the newest chunk, rewound) when that count
 * drops to zero.
 */
#include "util/wbuf.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

struct ks_wbuf_chunk {
        ks_wbuf_chunk_t *next;
        size_t cap, used;
        int refs; /* live segments pointing into this chunk */
        uint8_t data[];
};

void ks_wbuf_init(ks_wbuf_t *w)
{
        memset(w, 0, sizeof(*w));
}

size_t ks_wbuf_len(const ks_wbuf_t *w)
{
        return w->len;
}

/* Makes room for one more segment. */
static int seg_reserve(ks_wbuf_t *w)
{
        if (w->nseg < w->cap)
                return 0;
        if (w->head > 0) {
                /* Slide live segments to the front. */
                int live = w->nseg - w->head;
                memmove(w->iov, w->iov + w->head, (size_t)live * sizeof(*w->iov));
                memmove(w->owner, w->owner + w->head, (size_t)live * sizeof(*w->owner));
                w->head = 0;
                w->nseg = live;
                if (w->nseg < w->cap)
                        return 0;
        }
        int ncap = w->cap ? w->cap * 2 : 16;
        struct iovec *iov = realloc(w->iov, (size_t)ncap * sizeof(*iov));
        if (!iov)
                return -1;
        w->iov = iov;
        ks_wbuf_chunk_t **own = realloc(w->owner, (size_t)ncap * sizeof(*own));
        if (!own)
                return -1;
        w->owner = own;
        w->cap = ncap;
        return 0;
}

static void chunk_unlink_free(ks_wbuf_t *w, ks_wbuf_chunk_t *c)
{
        ks_wbuf_chunk_t **pp = &w->chunks;
        while (*pp && *pp != c)
                pp = &(*pp)->next;
        assert(*pp == c);
        *pp = c->next;
        if (w->tail == c) {
                /* Recompute the tail (only happens when freeing everything). */
                ks_wbuf_chunk_t *t = w->chunks;
                while (t && t->next)
                        t = t->next;
                w->tail = t;
        }
        free(c);
}

/* Appends @n owned bytes (contiguous) and returns where to write them. */
static uint8_t *append_owned(ks_wbuf_t *w, size_t n)
{
        static uint8_t empty; /* valid non-NULL result for n == 0; never written */
        if (n == 0)
                return &empty;
        if (seg_reserve(w))
                return NULL;
        ks_wbuf_chunk_t *c = w->tail;
        if (!c || c->cap - c->used < n) {
                if (c && c->refs == 0) {
                        /* Fully consumed and too small: drop it. */
                        chunk_unlink_free(w, c);
                        c = w->tail;
                }
                size_t cap = n > KS_WBUF_CHUNK_SIZE ? n : KS_WBUF_CHUNK_SIZE;
                ks_wbuf_chunk_t *nc = malloc(sizeof(*nc) + cap);
                if (!nc)
                        return NULL;
                nc->next = NULL;
                nc->cap = cap;
                nc->used = 0;
                nc->refs = 0;
                if (c)
                        c->next = nc;
                else
                        w->chunks = nc;
                w->tail = nc;
                c = nc;
        }
        uint8_t *p = c->data + c->used;
        int last = w->nseg - 1;
        if (last >= w->head && w->owner[last] == c &&
            (const uint8_t *)w->iov[last].iov_base + w->iov[last].iov_len == p) {
                w->iov[last].iov_len += n;
        } else {
                w->iov[w->nseg].iov_base = p;
                w->iov[w->nseg].iov_len = n;
                w->owner[w->nseg] = c;
                w->nseg++;
                c->refs++;
        }
        c->used += n;
        w->len += n;
        return p;
}

uint8_t *ks_wbuf_reserve(ks_wbuf_t *w, size_t n)
{
        return append_owned(w, n);
}

int ks_wbuf_put(ks_wbuf_t *w, const void *p, size_t n)
{
        if (n == 0)
                return 0;
        uint8_t *dst = append_owned(w, n);
        if (!dst)
                return -1;
        memcpy(dst, p, n);
        return 0;
}

int ks_wbuf_ref(ks_wbuf_t *w, const void *p, size_t n)
{
        if (n < KS_WBUF_REF_MIN)
                return ks_wbuf_put(w, p, n);
        if (seg_reserve(w))
                return -1;
        w->iov[w->nseg].iov_base = (void *)(uintptr_t)p; /* never written through */
        w->iov[w->nseg].iov_len = n;
        w->owner[w->nseg] = NULL;
        w->nseg++;
        w->len += n;
        return 0;
}

void ks_wbuf_patch_be32(ks_wbuf_t *w, size_t pos, uint32_t v)
{
        uint8_t b[4] = { (uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v };
        size_t k = 0;
        assert(pos + 4 <= w->len);
        for (int i = w->head; i < w->nseg && k < 4; i++) {
                size_t sl = w->iov[i].iov_len;
                if (pos >= sl) {
                        pos -= sl;
                        continue;
                }
                assert(w->owner[i] != NULL);
                uint8_t *base = w->iov[i].iov_base;
                while (pos < sl && k < 4)
                        base[pos++] = b[k++];
                pos = 0;
        }
        assert(k == 4);
}

int ks_wbuf_iov(ks_wbuf_t *w, struct iovec **iov, int *iovcnt)
{
        *iov = w->iov ? w->iov + w->head : NULL;
        *iovcnt = w->nseg - w->head;
        return 0;
}

static void seg_drop_front(ks_wbuf_t *w)
{
        ks_wbuf_chunk_t *c = w->owner[w->head];
        w->len -= w->iov[w->head].iov_len;
        w->head++;
        if (c && --c->refs == 0) {
                if (c == w->tail)
                        c->used = 0; /* rewind: nothing points into it any more */
                else
                        chunk_unlink_free(w, c);
        }
}

void ks_wbuf_consume(ks_wbuf_t *w, size_t n)
{
        while (n > 0 && w->head < w->nseg) {
                struct iovec *s = &w->iov[w->head];
                if (n >= s->iov_len) {
                        n -= s->iov_len;
                        seg_drop_front(w);
                } else {
                        s->iov_base = (uint8_t *)s->iov_base + n;
                        s->iov_len -= n;
                        w->len -= n;
                        n = 0;
                }
        }
        if (w->head == w->nseg)
                w->head = w->nseg = 0;
}

void ks_wbuf_copyout(const ks_wbuf_t *w, void *dst)
{
        uint8_t *d = dst;
        for (int i = w->head; i < w->nseg; i++) {
                memcpy(d, w->iov[i].iov_base, w->iov[i].iov_len);
                d += w->iov[i].iov_len;
        }
}

void ks_wbuf_reset(ks_wbuf_t *w)
{
        ks_wbuf_chunk_t *c = w->chunks;
        while (c) {
                ks_wbuf_chunk_t *next = c->next;
                free(c);
                c = next;
        }
        w->chunks = w->tail = NULL;
        w->head = w->nseg = 0;
        w->len = 0;
}

void ks_wbuf_destroy(ks_wbuf_t *w)
{
        ks_wbuf_reset(w);
        free(w->iov);
        free(w->owner);
        memset(w, 0, sizeof(*w));
}
