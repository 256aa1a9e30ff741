/*
 * fuzz_s3_xml.c — libFuzzer target for the decoding of S3's XML answers
 * (src/storage/objstore_s3.c through src/storage/objstore_s3_xml.h): what a
 * broken or hostile S3-compatible server, or anything answering on its
 * port, could send the broker.
 *
 * Input: any bytes, decoded whole as one ListObjectsV2 page (prefix "p/")
 * and as an <Error> document.  Invariants checked (abort on violation):
 *   - nothing crashes, leaks or reads outside the input (ASan/UBSan, LSan);
 *   - a failed page yields no continuation token;
 *   - every listed key starts with the prefix, passes the store's key
 *     check, is NUL-terminated at its length; sizes are non-negative;
 *   - error fields are printable and free of double quotes.
 *
 * Build: make fuzz   (clang -g -O1 -fsanitize=fuzzer,address,undefined ...)
 * Seeds: tests/fuzz/corpus/fuzz_s3_xml/ (answers in the shape of s3rver's
 * and AWS's).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "storage/objstore_s3_xml.h"

static void check_clean(const char *s, size_t cap)
{
        size_t n = strnlen(s, cap);
        FUZZ_ASSERT(n < cap);
        for (size_t i = 0; i < n; i++)
                FUZZ_ASSERT((unsigned char)s[i] >= 0x20 && s[i] != 0x7f && s[i] != '"');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        /* Exact-size heap copy so ASan catches any read past the end. */
        char *buf = malloc(size ? size : 1);
        if (!buf)
                return 0;
        if (size)
                memcpy(buf, data, size);

        ks_objlist_t l = { 0 };
        size_t cap = 0, skipped = 0;
        int truncated = -1;
        char *token = (char *)"unset";
        ks_err_t err = ks_s3_xml_list_page(buf, size, "p/", &l, &cap, &truncated, &token, &skipped);
        if (err) {
                FUZZ_ASSERT(token == NULL);
        } else {
                FUZZ_ASSERT(truncated == 0 || truncated == 1);
                for (size_t i = 0; i < l.count; i++) {
                        const char *k = l.items[i].key;
                        FUZZ_ASSERT(k && strncmp(k, "p/", 2) == 0);
                        FUZZ_ASSERT(ks_objstore_key_check(k) == KS_ERR_NONE);
                        FUZZ_ASSERT(l.items[i].size >= 0);
                }
                free(token);
        }
        ks_objlist_free(&l);

        char code[64], msg[256], rid[64];
        ks_s3_xml_error(buf, size, code, sizeof(code), msg, sizeof(msg), rid, sizeof(rid));
        check_clean(code, sizeof(code));
        check_clean(msg, sizeof(msg));
        check_clean(rid, sizeof(rid));
        free(buf);
        return 0;
}
