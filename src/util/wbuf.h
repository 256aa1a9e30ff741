/*
 * wbuf.h — output buffer for responses: a sequence of segments, each either
 * bytes owned by the buffer (copied in) or a borrowed reference to external
 * memory (e.g. record batches in a segment cache), emitted as an iovec list
 * for writev().
 *
 * Positions: ks_wbuf_len() is the number of bytes currently held (appended
 * and not yet consumed).  A position taken with ks_wbuf_len() stays valid
 * for ks_wbuf_patch_be32() as long as nothing is consumed in between.
 *
 * Memory: owned bytes live in malloc'ed chunks that never move, so pointers
 * returned by ks_wbuf_reserve() stay valid until those bytes are consumed or
 * the buffer is destroyed.  Chunks are freed as soon as everything in them
 * has been consumed.  Referenced memory must stay valid and unchanged until
 * it has been consumed (sent) or the buffer destroyed; the buffer never
 * frees it.
 *
 * Thread-safety: not synchronised; one thread at a time per buffer.
 */
#ifndef KS_UTIL_WBUF_H
#define KS_UTIL_WBUF_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* ks_wbuf_ref() copies instead of referencing below this size. */
#define KS_WBUF_REF_MIN     512
#define KS_WBUF_CHUNK_SIZE  4096

typedef struct ks_wbuf_chunk ks_wbuf_chunk_t; /* opaque */

typedef struct ks_wbuf {
        struct iovec *iov;        /* segments; [head, nseg) are live */
        ks_wbuf_chunk_t **owner;  /* per segment: owning chunk, NULL for references */
        int head, nseg, cap;
        ks_wbuf_chunk_t *chunks;  /* live chunks, oldest first */
        ks_wbuf_chunk_t *tail;    /* newest chunk (append target) */
        size_t len;               /* bytes held */
} ks_wbuf_t;

/* Initialises an empty buffer (no allocation). */
void ks_wbuf_init(ks_wbuf_t *w);

/* Appends a copy of @n bytes at @p.  0, or -1 on allocation failure (the
 * buffer is unchanged then). */
int ks_wbuf_put(ks_wbuf_t *w, const void *p, size_t n);

/* Appends a reference to @n bytes at @p (no copy); the memory must stay
 * valid until consumed/destroyed.  Small pieces (< KS_WBUF_REF_MIN) are
 * copied instead.  0 or -1 on allocation failure. */
int ks_wbuf_ref(ks_wbuf_t *w, const void *p, size_t n);

/* Appends @n contiguous writable bytes (uninitialised) and returns them,
 * or NULL on allocation failure.  The pointer stays valid until those bytes
 * are consumed or the buffer is destroyed. */
uint8_t *ks_wbuf_reserve(ks_wbuf_t *w, size_t n);

/* Bytes currently held. */
size_t ks_wbuf_len(const ks_wbuf_t *w);

/* Overwrites the 4 bytes at position @pos (from the current front, see
 * above) with @v big-endian.  The bytes must be owned by the buffer (put or
 * reserved, not referenced) and lie within ks_wbuf_len(). */
void ks_wbuf_patch_be32(ks_wbuf_t *w, size_t pos, uint32_t v);

/* Points *iov / *iovcnt at the buffer's content (internal array: valid until
 * the next call that modifies the buffer; do not free).  Returns 0.  An empty
 * buffer gives *iovcnt == 0.  *iovcnt may exceed IOV_MAX: pass at most
 * IOV_MAX entries to writev. */
int ks_wbuf_iov(ks_wbuf_t *w, struct iovec **iov, int *iovcnt);

/* Drops @n bytes from the front (after a possibly partial writev); @n larger
 * than the length empties the buffer. */
void ks_wbuf_consume(ks_wbuf_t *w, size_t n);

/* Copies the whole content into @dst (which has room for ks_wbuf_len()
 * bytes); for tests and small messages. */
void ks_wbuf_copyout(const ks_wbuf_t *w, void *dst);

/* Drops all content (like consuming everything); keeps no chunk. */
void ks_wbuf_reset(ks_wbuf_t *w);

/* Frees everything; the buffer may be re-initialised with ks_wbuf_init. */
void ks_wbuf_destroy(ks_wbuf_t *w);

#endif
