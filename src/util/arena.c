/*
 * arena.c — chunked bump allocator (see arena.h).
 */
#include "util/arena.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_MAX_CHUNK (1u << 20)

struct ks_arena_chunk {
        ks_arena_chunk_t *next;
        size_t size; /* payload bytes */
        size_t used;
        _Alignas(KS_ARENA_ALIGN) unsigned char data[];
};

static size_t align_up(size_t n)
{
        return (n + (KS_ARENA_ALIGN - 1)) & ~(size_t)(KS_ARENA_ALIGN - 1);
}

void ks_arena_init(ks_arena_t *a, size_t first_chunk)
{
        if (first_chunk == 0)
                first_chunk = KS_ARENA_DEFAULT_CHUNK;
        a->chunks = NULL;
        a->cur = NULL;
        a->first_chunk = align_up(first_chunk);
        a->next_chunk = a->first_chunk;
        a->allocated = 0;
}

static ks_arena_chunk_t *chunk_new(size_t size)
{
        if (size > SIZE_MAX - sizeof(ks_arena_chunk_t))
                return NULL;
        ks_arena_chunk_t *c = malloc(sizeof(*c) + size);
        if (!c)
                return NULL;
        c->next = NULL;
        c->size = size;
        c->used = 0;
        return c;
}

void *ks_arena_alloc(ks_arena_t *a, size_t n)
{
        if (n > SIZE_MAX / 2)
                return NULL;
        size_t need = align_up(n ? n : 1);
        ks_arena_chunk_t *c = a->cur;

        if (c && c->size - c->used >= need) {
                void *p = c->data + c->used;
                c->used += need;
                a->allocated += need;
                return p;
        }

        if (!a->chunks) {
                /* First allocation: create the first (kept) chunk, always of
                 * the configured size so resets never retain a huge chunk. */
                c = chunk_new(a->first_chunk);
                if (!c)
                        return NULL;
                a->chunks = c;
                a->cur = c;
                if (c->size >= need) {
                        c->used = need;
                        a->allocated += need;
                        return c->data;
                }
        }

        if (need > a->next_chunk / 4) {
                /* Large request: own chunk, linked behind the current one so
                 * the current chunk keeps serving small allocations. */
                ks_arena_chunk_t *big = chunk_new(need);
                if (!big)
                        return NULL;
                big->used = need;
                big->next = a->chunks;
                a->chunks = big;
                a->allocated += need;
                return big->data;
        }

        if (a->next_chunk < ARENA_MAX_CHUNK)
                a->next_chunk *= 2;
        c = chunk_new(a->next_chunk);
        if (!c)
                return NULL;
        c->next = a->chunks;
        a->chunks = c;
        a->cur = c;
        c->used = need;
        a->allocated += need;
        return c->data;
}

void *ks_arena_calloc(ks_arena_t *a, size_t n)
{
        void *p = ks_arena_alloc(a, n);
        if (p)
                memset(p, 0, n);
        return p;
}

char *ks_arena_strndup(ks_arena_t *a, const char *s, size_t n)
{
        size_t len = strnlen(s, n);
        char *p = ks_arena_alloc(a, len + 1);
        if (!p)
                return NULL;
        memcpy(p, s, len);
        p[len] = '\0';
        return p;
}

ks_str_t ks_arena_str_dup(ks_arena_t *a, ks_str_t s)
{
        if (s.len < 0)
                return KS_STR_NULL;
        char *p = ks_arena_alloc(a, (size_t)s.len + 1);
        if (!p)
                return KS_STR_NULL;
        if (s.len)
                memcpy(p, s.ptr, (size_t)s.len);
        p[s.len] = '\0';
        return (ks_str_t){ p, s.len };
}

ks_str_t ks_arena_vstr(ks_arena_t *a, const char *fmt, va_list ap)
{
        va_list ap2;
        va_copy(ap2, ap);
        int n = vsnprintf(NULL, 0, fmt, ap2);
        va_end(ap2);
        if (n < 0)
                return KS_STR_NULL;
        char *p = ks_arena_alloc(a, (size_t)n + 1);
        if (!p)
                return KS_STR_NULL;
        vsnprintf(p, (size_t)n + 1, fmt, ap);
        return (ks_str_t){ p, n };
}

ks_str_t ks_arena_str(ks_arena_t *a, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        ks_str_t s = ks_arena_vstr(a, fmt, ap);
        va_end(ap);
        return s;
}

void ks_arena_reset(ks_arena_t *a)
{
        ks_arena_chunk_t *c = a->chunks;
        if (!c)
                return;
        /* The first chunk is the last one in the list. */
        while (c->next) {
                ks_arena_chunk_t *next = c->next;
                free(c);
                c = next;
        }
        c->used = 0;
        a->chunks = c;
        a->cur = c;
        a->next_chunk = a->first_chunk;
        a->allocated = 0;
}

void ks_arena_destroy(ks_arena_t *a)
{
        ks_arena_chunk_t *c = a->chunks;
        while (c) {
                ks_arena_chunk_t *next = c->next;
                free(c);
                c = next;
        }
        a->chunks = NULL;
        a->cur = NULL;
        a->next_chunk = a->first_chunk;
        a->allocated = 0;
}
