/*
 * crc32c.c — CRC-32C, hardware (SSE4.2) and portable paths (see crc32c.h).
 *
 * Internally both paths work on the raw CRC register (no pre/post
 * inversion); the public functions invert on the way in and out.
 *
 * Interleaving (hardware path).  The raw register update is linear over
 * GF(2) in (register, data), so for a buffer A || B:
 *
 *     raw(c, A || B) = Z_|B|(raw(c, A)) ^ raw(0, B)
 *
 * where Z_n(x) is the register after feeding n zero bytes from state x —
 * itself a linear map of x, applied here with four 256-entry tables (one per
 * byte of x).  A block of 3*L bytes is therefore processed as three
 * independent crc32 streams over L bytes each, joined with two Z_L steps.
 * L is 8 KiB for large buffers (joining cost negligible) and 256 bytes for
 * the medium-sized tail.
 */
#include "util/crc32c.h"

#include <pthread.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define KS_CRC32C_X86 1
#include <nmmintrin.h>
#else
#define KS_CRC32C_X86 0
#endif

#define POLY 0x82F63B78u /* reflected Castagnoli polynomial */

#define SHORT_LEN 256u             /* lane length for medium buffers */
#define LONG_LEN  (32u * SHORT_LEN) /* lane length for big buffers: 8 KiB */

/* Slicing-by-8 tables: sw_table[0] is the classic byte table; sw_table[k][b]
 * is the register after feeding byte b followed by k zero bytes. */
static uint32_t sw_table[8][256];

/* Zero-feeding operators Z_SHORT and Z_LONG: four 256-entry tables each,
 * one per byte of the register (entry 256 * k + b: byte k equal to b). */
static uint32_t zeros_short[4 * 256];
static uint32_t zeros_long[4 * 256];

static int have_hw;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static inline uint32_t load32_le(const uint8_t *p)
{
        return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Applies a zero-feeding operator table to the register @x. */
static inline uint32_t zeros_apply(const uint32_t *tab, uint32_t x)
{
        return tab[x & 0xff] ^ tab[256 + ((x >> 8) & 0xff)] ^ tab[512 + ((x >> 16) & 0xff)] ^ tab[768 + (x >> 24)];
}

/* Builds @tab for the linear map whose images of the 32 basis vectors
 * (bit i set) are @basis[i]. */
static void zeros_build(uint32_t *tab, const uint32_t basis[32])
{
        for (int k = 0; k < 4; k++) {
                for (unsigned b = 0; b < 256; b++) {
                        uint32_t v = 0;
                        for (int bit = 0; bit < 8; bit++)
                                if (b & (1u << bit))
                                        v ^= basis[8 * k + bit];
                        tab[256 * k + b] = v;
                }
        }
}

static void crc_init(void)
{
        for (uint32_t b = 0; b < 256; b++) {
                uint32_t c = b;
                for (int i = 0; i < 8; i++)
                        c = (c >> 1) ^ (POLY & (0u - (c & 1u)));
                sw_table[0][b] = c;
        }
        for (int k = 1; k < 8; k++)
                for (uint32_t b = 0; b < 256; b++)
                        sw_table[k][b] = (sw_table[k - 1][b] >> 8) ^ sw_table[0][sw_table[k - 1][b] & 0xff];

        /* Z_SHORT on each basis vector, byte by byte; then Z_LONG as
         * Z_SHORT applied LONG_LEN / SHORT_LEN times. */
        uint32_t basis[32];
        for (int i = 0; i < 32; i++) {
                uint32_t x = 1u << i;
                for (unsigned n = 0; n < SHORT_LEN; n++)
                        x = (x >> 8) ^ sw_table[0][x & 0xff];
                basis[i] = x;
        }
        zeros_build(zeros_short, basis);
        for (int i = 0; i < 32; i++) {
                uint32_t x = 1u << i;
                for (unsigned n = 0; n < LONG_LEN / SHORT_LEN; n++)
                        x = zeros_apply(zeros_short, x);
                basis[i] = x;
        }
        zeros_build(zeros_long, basis);

#if KS_CRC32C_X86
        __builtin_cpu_init();
        have_hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#endif
}

static inline void crc_ready(void)
{
        (void)pthread_once(&init_once, crc_init);
}

/* Portable path on the raw register. */
static uint32_t crc_sw(uint32_t crc, const uint8_t *p, size_t n)
{
        while (n && ((uintptr_t)p & 7)) {
                crc = (crc >> 8) ^ sw_table[0][(crc ^ *p++) & 0xff];
                n--;
        }
        while (n >= 8) {
                uint32_t lo = crc ^ load32_le(p);
                uint32_t hi = load32_le(p + 4);
                crc = sw_table[7][lo & 0xff] ^ sw_table[6][(lo >> 8) & 0xff] ^ sw_table[5][(lo >> 16) & 0xff] ^
                      sw_table[4][lo >> 24] ^ sw_table[3][hi & 0xff] ^ sw_table[2][(hi >> 8) & 0xff] ^
                      sw_table[1][(hi >> 16) & 0xff] ^ sw_table[0][hi >> 24];
                p += 8;
                n -= 8;
        }
        while (n--)
                crc = (crc >> 8) ^ sw_table[0][(crc ^ *p++) & 0xff];
        return crc;
}

#if KS_CRC32C_X86
__attribute__((target("sse4.2"))) static inline uint64_t load64(const uint8_t *p)
{
        uint64_t v;
        memcpy(&v, p, 8); /* x86 is little-endian, as the instruction wants */
        return v;
}

/* Three interleaved streams over lanes of @lane bytes while at least
 * 3 * @lane bytes are left; returns the register, advances *pp / *np. */
__attribute__((target("sse4.2"))) static inline uint64_t
crc_hw_3way(uint64_t c0, const uint8_t **pp, size_t *np, size_t lane, const uint32_t *zeros)
{
        const uint8_t *p = *pp;
        size_t n = *np;
        while (n >= 3 * lane) {
                uint64_t c1 = 0, c2 = 0;
                const uint8_t *end = p + lane;
                do {
                        c0 = _mm_crc32_u64(c0, load64(p));
                        c1 = _mm_crc32_u64(c1, load64(p + lane));
                        c2 = _mm_crc32_u64(c2, load64(p + 2 * lane));
                        p += 8;
                } while (p < end);
                c0 = zeros_apply(zeros, (uint32_t)c0) ^ (uint32_t)c1;
                c0 = zeros_apply(zeros, (uint32_t)c0) ^ (uint32_t)c2;
                p += 2 * lane;
                n -= 3 * lane;
        }
        *pp = p;
        *np = n;
        return c0;
}

/* Hardware path on the raw register. */
__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const uint8_t *p, size_t n)
{
        while (n && ((uintptr_t)p & 7)) {
                crc = _mm_crc32_u8(crc, *p++);
                n--;
        }
        uint64_t c = crc;
        c = crc_hw_3way(c, &p, &n, LONG_LEN, zeros_long);
        c = crc_hw_3way(c, &p, &n, SHORT_LEN, zeros_short);
        while (n >= 8) {
                c = _mm_crc32_u64(c, load64(p));
                p += 8;
                n -= 8;
        }
        crc = (uint32_t)c;
        while (n--)
                crc = _mm_crc32_u8(crc, *p++);
        return crc;
}
#endif

uint32_t ks_crc32c_update_sw(uint32_t crc, const void *p, size_t n)
{
        crc_ready();
        if (n == 0)
                return crc;
        return ~crc_sw(~crc, (const uint8_t *)p, n);
}

uint32_t ks_crc32c_update_hw(uint32_t crc, const void *p, size_t n)
{
        crc_ready();
        if (n == 0)
                return crc;
#if KS_CRC32C_X86
        if (have_hw)
                return ~crc_hw(~crc, (const uint8_t *)p, n);
#endif
        return ~crc_sw(~crc, (const uint8_t *)p, n);
}

uint32_t ks_crc32c_update(uint32_t crc, const void *p, size_t n)
{
        return ks_crc32c_update_hw(crc, p, n);
}

int ks_crc32c_hw_available(void)
{
        crc_ready();
        return have_hw;
}

const char *ks_crc32c_impl_name(void)
{
        return ks_crc32c_hw_available() ? "sse4.2" : "table";
}
