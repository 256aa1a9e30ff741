/*
 * crc32c.h — CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the
 * checksum of Kafka record batches (magic 2) and of KafScale segment bodies.
 *
 * Two implementations behind one API, chosen once per process at the first
 * call:
 *  - x86-64 with SSE4.2: the `crc32` instruction, 8 bytes per instruction,
 *    three independent streams interleaved for buffers of 768 bytes and more
 *    (the instruction has a latency of 3 cycles and a throughput of 1, so
 *    three streams keep it busy) and recombined with precomputed tables;
 *  - anywhere else: a portable slicing-by-8 table implementation.
 *
 * Values are the finished CRC (initial value and final XOR of 0xFFFFFFFF
 * applied), so ks_crc32c("123456789", 9) == 0xE3069283, and an update can
 * continue from any finished value:
 *
 *     crc = ks_crc32c(a, alen);
 *     crc = ks_crc32c_update(crc, b, blen);   // == ks_crc32c(a || b)
 *
 * Thread-safety: every function is reentrant and may be called from any
 * thread; the tables are built once (pthread_once) and only read after.
 * No function allocates.
 */
#ifndef KS_UTIL_CRC32C_H
#define KS_UTIL_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Continues the finished CRC @crc (0 to start) over @n bytes at @p (@p may
 * be NULL if @n is 0; no alignment needed) and returns the finished CRC. */
uint32_t ks_crc32c_update(uint32_t crc, const void *p, size_t n);

/* CRC-32C of @n bytes at @p. */
static inline uint32_t ks_crc32c(const void *p, size_t n)
{
        return ks_crc32c_update(0, p, n);
}

/* The portable table-driven path, whatever the CPU (tests, benchmarks). */
uint32_t ks_crc32c_update_sw(uint32_t crc, const void *p, size_t n);

/* The hardware path; falls back to the portable one when the CPU lacks it
 * (check ks_crc32c_hw_available()). */
uint32_t ks_crc32c_update_hw(uint32_t crc, const void *p, size_t n);

/* 1 if the hardware path is usable on this CPU (and is what
 * ks_crc32c_update uses), else 0. */
int ks_crc32c_hw_available(void);

/* Name of the implementation ks_crc32c_update uses: "sse4.2" or "table"
 * (for the start-up log line). */
const char *ks_crc32c_impl_name(void);

#endif
