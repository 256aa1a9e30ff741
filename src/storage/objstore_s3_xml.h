/*
 * objstore_s3_xml.h — private to objstore_s3.c and its tests: the decoders
 * of S3's XML answers, exposed so they can be fuzzed on their own.
 */
#ifndef KS_STORAGE_OBJSTORE_S3_XML_H
#define KS_STORAGE_OBJSTORE_S3_XML_H

#include <stddef.h>

#include "storage/objstore.h"
#include "util/err.h"

/* One ListObjectsV2 page (`body`, `len` bytes, not NUL-terminated): every
 * <Contents> entry under `prefix` is appended to *out (capacity *cap,
 * ks_objlist_push); entries whose keys this store could not have written
 * are counted in *skipped.  *truncated and *next_token (malloc'ed, or NULL)
 * tell whether and where the listing continues.  KS_ERR__PARSE for a
 * malformed or inconsistent page (an entry without key or size, another
 * prefix, a repeated field), KS_ERR__NOMEM.  On error *next_token is NULL;
 * entries appended before the error stay in *out for the caller to free. */
ks_err_t ks_s3_xml_list_page(const char *body, size_t len, const char *prefix, ks_objlist_t *out, size_t *cap,
                             int *truncated, char **next_token, size_t *skipped);

/* An S3 <Error> document: its Code, Message and RequestId, cleaned for log
 * lines (ks_log_clean) and truncated to the buffers; empty strings for
 * what is missing or when `body` is not such a document. */
void ks_s3_xml_error(const char *body, size_t len, char *code, size_t codelen, char *msg, size_t msglen,
                     char *request_id, size_t idlen);

#endif
