/*
 * test_crc32c.c — CRC-32C: known vectors, incremental use, and the hardware
 * path against the portable one for every length and alignment.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "util/crc32c.h"

static uint64_t crc_rng_next(uint64_t *s)
{
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        return *s * 0x2545F4914F6CDD1DULL;
}

static void crc_fill(uint8_t *p, size_t n, uint64_t seed)
{
        uint64_t s = seed | 1;
        for (size_t i = 0; i < n; i++)
                p[i] = (uint8_t)(crc_rng_next(&s) >> 56);
}

TEST(crc32c_known_vectors)
{
        uint8_t buf[32];

        CHECK_EQ_INT(ks_crc32c("123456789", 9), 0xE3069283u);
        CHECK_EQ_INT(ks_crc32c_update_sw(0, "123456789", 9), 0xE3069283u);
        CHECK_EQ_INT(ks_crc32c_update_hw(0, "123456789", 9), 0xE3069283u);
        CHECK_EQ_INT(ks_crc32c(NULL, 0), 0);
        CHECK_EQ_INT(ks_crc32c("a", 1), 0xC1D04330u);

        /* RFC 3720 (iSCSI) appendix B.4 vectors. */
        memset(buf, 0, sizeof(buf));
        CHECK_EQ_INT(ks_crc32c(buf, 32), 0x8A9136AAu);
        CHECK_EQ_INT(ks_crc32c_update_sw(0, buf, 32), 0x8A9136AAu);
        memset(buf, 0xff, sizeof(buf));
        CHECK_EQ_INT(ks_crc32c(buf, 32), 0x62A8AB43u);
        for (int i = 0; i < 32; i++)
                buf[i] = (uint8_t)i;
        CHECK_EQ_INT(ks_crc32c(buf, 32), 0x46DD794Eu);
        for (int i = 0; i < 32; i++)
                buf[i] = (uint8_t)(31 - i);
        CHECK_EQ_INT(ks_crc32c(buf, 32), 0x113FDB5Cu);
}

TEST(crc32c_zeros_long)
{
        /* Long zero buffers exercise the interleaved path and its joining
         * tables; hardware and software must agree. */
        size_t n = 3 * 8192 * 2 + 3 * 256 + 13;
        uint8_t *z = calloc(1, n);
        REQUIRE(z != NULL);
        for (size_t len = 0; len <= n; len += 997)
                CHECK_EQ_INT(ks_crc32c_update_hw(0, z, len), ks_crc32c_update_sw(0, z, len));
        CHECK_EQ_INT(ks_crc32c_update_hw(0, z, n), ks_crc32c_update_sw(0, z, n));
        free(z);
}

TEST(crc32c_hw_matches_sw_every_length_and_alignment)
{
        uint8_t buf[300 + 16];
        crc_fill(buf, sizeof(buf), 42);
        int mismatches = 0;
        for (size_t start = 0; start < 16; start++) {
                for (size_t len = 0; len <= 300; len++) {
                        uint32_t sw = ks_crc32c_update_sw(0, buf + start, len);
                        uint32_t hw = ks_crc32c_update_hw(0, buf + start, len);
                        uint32_t any = ks_crc32c(buf + start, len);
                        if (sw != hw || sw != any)
                                mismatches++;
                }
        }
        CHECK_EQ_INT(mismatches, 0);
}

TEST(crc32c_hw_matches_sw_big_buffers)
{
        /* Lengths around the 3-way thresholds (3 * 256 and 3 * 8192) and
         * well past them, at odd starts. */
        static const size_t lens[] = { 767, 768, 769, 775, 776, 1536, 24575, 24576, 24577, 24583,
                                       49152 + 768, 65536, 100000, 1 << 20 };
        size_t max = 1 << 20;
        uint8_t *buf = malloc(max + 8);
        REQUIRE(buf != NULL);
        crc_fill(buf, max + 8, 7);
        for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
                for (size_t start = 0; start < 8; start += 3) {
                        uint32_t sw = ks_crc32c_update_sw(0, buf + start, lens[i]);
                        uint32_t hw = ks_crc32c_update_hw(0, buf + start, lens[i]);
                        if (sw != hw)
                                ks_test_fail(__FILE__, __LINE__, "len %zu start %zu: sw %08x hw %08x", lens[i],
                                             start, sw, hw);
                }
        }
        free(buf);
}

TEST(crc32c_incremental_equals_whole)
{
        uint8_t buf[2000];
        crc_fill(buf, sizeof(buf), 99);
        uint32_t whole = ks_crc32c(buf, sizeof(buf));
        int bad = 0;
        for (size_t cut = 0; cut <= sizeof(buf); cut += 7) {
                uint32_t c = ks_crc32c(buf, cut);
                c = ks_crc32c_update(c, buf + cut, sizeof(buf) - cut);
                if (c != whole)
                        bad++;
                uint32_t s = ks_crc32c_update_sw(0, buf, cut);
                s = ks_crc32c_update_sw(s, buf + cut, sizeof(buf) - cut);
                if (s != whole)
                        bad++;
        }
        CHECK_EQ_INT(bad, 0);
        /* Byte by byte. */
        uint32_t c = 0;
        for (size_t i = 0; i < sizeof(buf); i++)
                c = ks_crc32c_update(c, buf + i, 1);
        CHECK_EQ_INT(c, whole);
}

TEST(crc32c_reports_impl)
{
        const char *name = ks_crc32c_impl_name();
        CHECK(strcmp(name, "sse4.2") == 0 || strcmp(name, "table") == 0);
        CHECK_EQ_INT(strcmp(name, "sse4.2") == 0, ks_crc32c_hw_available());
}
