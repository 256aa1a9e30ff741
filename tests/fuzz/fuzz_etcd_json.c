/*
 * fuzz_etcd_json.c — libFuzzer target for the decoding of etcd JSON gateway
 * answers (src/meta/kv_etcd.c through src/meta/kv_etcd_json.h): what a
 * hostile or broken etcd member, or anything listening on its port, could
 * send the broker.
 *
 * Input: any bytes.  They are given whole to every decoder (range, delete,
 * txn, lease grant, keepalive, authenticate, error, header, one watch line),
 * to the base64 decoder, and to the watch stream's line splitter in chunks
 * cut where the input's first bytes say; each line it yields is decoded as a
 * watch message.  Invariants checked (abort on violation):
 *   - nothing crashes, leaks or reads outside the input (ASan/UBSan, LSan);
 *   - a failed decode leaves nothing behind (no results, no events);
 *   - decoded keys are non-empty, keys and values NUL-terminated after their
 *     length, revisions and versions non-negative;
 *   - watch events: revision = kv.mod_revision >= 1, non-decreasing; DELETE
 *     events carry no value;
 *   - messages are printable and free of double quotes;
 *   - the line splitter yields the same lines however the stream is cut;
 *   - base64 that decodes re-encodes to something that decodes the same.
 *
 * Build: make fuzz   (clang -g -O1 -fsanitize=fuzzer,address,undefined ...)
 * Seeds: tests/fuzz/corpus/fuzz_etcd_json/ (answers captured from etcd 3.4).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "meta/kv_etcd_json.h"

static void check_message(const char *m)
{
        size_t n = strnlen(m, KS_ETCD_MSG_MAX);
        FUZZ_ASSERT(n < KS_ETCD_MSG_MAX);
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char)m[i];
                FUZZ_ASSERT(c >= 0x20 && c != 0x7f && c != '"');
        }
}

static void check_pair(const ks_kv_pair_t *p)
{
        FUZZ_ASSERT(p->key && p->value);
        FUZZ_ASSERT(p->key[p->key_len] == 0 && p->value[p->value_len] == 0);
        FUZZ_ASSERT(p->create_rev >= 0 && p->mod_rev >= 0 && p->version >= 0);
}

static void check_watch(const char *buf, size_t len)
{
        ks_etcd_watch_msg_t m;
        ks_err_t err = ks_etcd_json_watch(buf, len, &m);
        if (err) {
                FUZZ_ASSERT(m.events == NULL && m.nevents == 0);
                return;
        }
        if (m.is_error) {
                check_message(m.error.message);
                FUZZ_ASSERT(m.nevents == 0);
        }
        check_message(m.cancel_reason);
        FUZZ_ASSERT(m.header_rev >= 0 && m.compact_rev >= 0);
        for (size_t i = 0; i < m.nevents; i++) {
                const ks_kv_event_t *e = &m.events[i];
                FUZZ_ASSERT(e->type == KS_KV_EV_PUT || e->type == KS_KV_EV_DELETE);
                check_pair(&e->kv);
                FUZZ_ASSERT(e->kv.key_len > 0);
                FUZZ_ASSERT(e->revision >= 1 && e->revision == e->kv.mod_rev);
                if (i)
                        FUZZ_ASSERT(e->revision >= m.events[i - 1].revision);
                if (e->type == KS_KV_EV_DELETE)
                        FUZZ_ASSERT(e->kv.value_len == 0 && e->kv.version == 0 && e->kv.create_rev == 0);
        }
        ks_etcd_watch_msg_free(&m);
}

/* Collected lines: each as <len><bytes>, to compare two splittings. */
typedef struct lines_out {
        uint8_t *buf;
        size_t len, cap;
        int n;
} lines_out_t;

static int collect(void *opaque, const char *line, size_t len)
{
        lines_out_t *o = opaque;
        FUZZ_ASSERT(len > 0 && memchr(line, '\n', len) == NULL);
        if (o->len + len + sizeof(len) > o->cap) {
                size_t ncap = (o->cap ? o->cap * 2 : 256) + len + sizeof(len);
                uint8_t *nb = realloc(o->buf, ncap);
                FUZZ_ASSERT(nb != NULL);
                o->buf = nb;
                o->cap = ncap;
        }
        memcpy(o->buf + o->len, &len, sizeof(len));
        memcpy(o->buf + o->len + sizeof(len), line, len);
        o->len += len + sizeof(len);
        o->n++;
        check_watch(line, len);
        return 0;
}

static void check_lines(const uint8_t *data, size_t size)
{
        lines_out_t whole = {0}, cut = {0};
        ks_etcd_lines_t l1 = {.max = 1 << 20}, l2 = {.max = 1 << 20};
        int r1 = ks_etcd_lines_feed(&l1, (const char *)data, size, collect, &whole);
        /* Cut points from the first bytes. */
        size_t off = 0, k = 0;
        int r2 = 0;
        while (off < size && r2 == 0) {
                size_t step = 1 + (size ? data[k % size] % 17 : 0);
                k++;
                if (step > size - off)
                        step = size - off;
                r2 = ks_etcd_lines_feed(&l2, (const char *)data + off, step, collect, &cut);
                off += step;
        }
        FUZZ_ASSERT(r1 == 0 && r2 == 0); /* lines under 1 MiB, collect never stops */
        FUZZ_ASSERT(whole.n == cut.n && whole.len == cut.len);
        FUZZ_ASSERT(whole.len == 0 || memcmp(whole.buf, cut.buf, whole.len) == 0);
        FUZZ_ASSERT(l1.len == l2.len);
        ks_etcd_lines_free(&l1);
        ks_etcd_lines_free(&l2);
        free(whole.buf);
        free(cut.buf);
}

static void check_b64(const char *buf, size_t len)
{
        uint8_t *d, *d2;
        size_t dl, dl2;
        if (ks_etcd_b64_decode(buf, len, &d, &dl) != KS_ERR_NONE) {
                FUZZ_ASSERT(d == NULL);
                return;
        }
        FUZZ_ASSERT(d[dl] == 0 && dl <= len);
        char *enc = malloc(KS_ETCD_B64_LEN(dl) + 1);
        FUZZ_ASSERT(enc != NULL);
        size_t el = ks_etcd_b64_encode(d, dl, enc);
        FUZZ_ASSERT(el == KS_ETCD_B64_LEN(dl) && enc[el] == 0);
        FUZZ_ASSERT(ks_etcd_b64_decode(enc, el, &d2, &dl2) == KS_ERR_NONE);
        FUZZ_ASSERT(dl2 == dl && memcmp(d, d2, dl) == 0);
        free(d2);
        free(enc);
        free(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        const char *buf = (const char *)data;
        ks_kv_result_t r;
        ks_etcd_error_t ee;
        int64_t a, b;
        bool ok;
        char *tok;

        if (ks_etcd_json_range(buf, size, &r) == KS_ERR_NONE) {
                FUZZ_ASSERT(r.revision >= 1);
                for (size_t i = 0; i < r.count; i++) {
                        check_pair(&r.kvs[i]);
                        FUZZ_ASSERT(r.kvs[i].key_len > 0);
                }
                ks_kv_result_free(&r);
        } else {
                FUZZ_ASSERT(r.count == 0 && r.kvs == NULL);
        }
        if (ks_etcd_json_delete(buf, size, &a, &b) == KS_ERR_NONE)
                FUZZ_ASSERT(a >= 0 && b >= 1);
        if (ks_etcd_json_txn(buf, size, &ok, &a) == KS_ERR_NONE)
                FUZZ_ASSERT(a >= 1);
        if (ks_etcd_json_header(buf, size, &a) == KS_ERR_NONE)
                FUZZ_ASSERT(a >= 1);
        if (ks_etcd_json_lease_grant(buf, size, &a, &b) == KS_ERR_NONE)
                FUZZ_ASSERT(a != 0 && b > 0);
        ks_err_t err = ks_etcd_json_keepalive(buf, size, &a, &ee);
        if (err == KS_ERR_NONE)
                FUZZ_ASSERT(a >= 0);
        else if (err == KS_ERR__NOT_FOUND)
                check_message(ee.message);
        if (ks_etcd_json_auth(buf, size, &tok) == KS_ERR_NONE) {
                FUZZ_ASSERT(tok && tok[0]);
                for (const char *p = tok; *p; p++)
                        FUZZ_ASSERT(*p > 0x20 && *p < 0x7f);
                free(tok);
        } else {
                FUZZ_ASSERT(tok == NULL);
        }
        if (ks_etcd_json_error(buf, size, &ee) == KS_ERR_NONE)
                check_message(ee.message);
        check_watch(buf, size);
        check_b64(buf, size);
        check_lines(data, size);
        return 0;
}
