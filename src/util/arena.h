/*
 * arena.h — per-request bump allocator.
 *
 * An arena hands out memory from large malloc'ed chunks; individual
 * allocations are never freed, everything is released at once by
 * ks_arena_reset() (keeps the first chunk for reuse) or ks_arena_destroy().
 * Typical use: one arena per connection, reset after every request; decoded
 * requests and the response being built live in it.
 *
 * Alignment: every allocation is aligned to KS_ARENA_ALIGN (16) bytes.
 * Requests larger than a quarter of the chunk size get a chunk of their own,
 * so big allocations do not waste the current chunk.
 *
 * Thread-safety: an arena is not synchronised; use it from one thread at a
 * time.  Different arenas are independent.
 */
#ifndef KS_UTIL_ARENA_H
#define KS_UTIL_ARENA_H

#include <stdarg.h>
#include <stddef.h>

#include "util/bytes.h"

#define KS_ARENA_ALIGN         16
#define KS_ARENA_DEFAULT_CHUNK 4096

typedef struct ks_arena_chunk ks_arena_chunk_t; /* opaque */

typedef struct ks_arena {
        ks_arena_chunk_t *chunks;  /* all chunks, newest first; the first chunk is last */
        ks_arena_chunk_t *cur;     /* chunk bump allocation happens in */
        size_t first_chunk;        /* payload size of the first chunk */
        size_t next_chunk;         /* payload size of the next regular chunk */
        size_t allocated;          /* bytes handed out since the last reset */
} ks_arena_t;

/* Initialises @a; no memory is allocated until the first allocation.
 * @first_chunk is the payload size of the first chunk (0: default 4 KiB);
 * later chunks grow geometrically (up to 1 MiB). */
void ks_arena_init(ks_arena_t *a, size_t first_chunk);

/* Returns @n bytes (uninitialised, KS_ARENA_ALIGN-aligned), valid until the
 * next reset/destroy.  @n == 0 returns a valid unique pointer.  Returns NULL
 * only if malloc fails (or @n is absurdly large). */
void *ks_arena_alloc(ks_arena_t *a, size_t n);

/* Like ks_arena_alloc but zero-filled. */
void *ks_arena_calloc(ks_arena_t *a, size_t n);

/* strndup into the arena: copies at most @n bytes of @s, stopping at a NUL,
 * and NUL-terminates.  NULL on allocation failure. */
char *ks_arena_strndup(ks_arena_t *a, const char *s, size_t n);

/* Copies the string view @s (exactly s.len bytes, NUL-terminated in memory
 * for convenience; the terminator is not counted in .len).  A null view
 * stays null.  Returns KS_STR_NULL on allocation failure too. */
ks_str_t ks_arena_str_dup(ks_arena_t *a, ks_str_t s);

/* printf into the arena; the result is NUL-terminated in memory (not
 * counted in .len).  Returns KS_STR_NULL on allocation/format failure. */
ks_str_t ks_arena_str(ks_arena_t *a, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));
ks_str_t ks_arena_vstr(ks_arena_t *a, const char *fmt, va_list ap)
        __attribute__((format(printf, 2, 0)));

/* Invalidates everything allocated so far; frees all chunks but the first,
 * which is kept (and reused) to avoid malloc churn. */
void ks_arena_reset(ks_arena_t *a);

/* Frees all memory.  The arena may be re-initialised with ks_arena_init. */
void ks_arena_destroy(ks_arena_t *a);

#endif
