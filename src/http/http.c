/*
 * http.c — /metrics, /healthz and /readyz over libmicrohttpd.
 *
 * We bind and listen ourselves (exact errno for the operator, port 0 for
 * tests) and hand the socket to libmicrohttpd (MHD_OPTION_LISTEN_SOCKET),
 * which runs one internal polling thread: it accepts, parses, and calls
 * handle() for every request.  Nothing here blocks that thread for long:
 * readiness comes from the caller's cached state, /metrics renders atomics.
 */
#include "http/http.h"
#include "net/listen.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "util/log.h"

#define HTTP_MAX_CONNECTIONS 64
#define HTTP_IDLE_TIMEOUT_S  10

struct ks_http {
        struct MHD_Daemon *daemon;
        ks_metrics_t *metrics;
        ks_ready_fn *ready;
        void *opaque;
        int port;
};

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
        (void)cls;
        char msg[256];
        int n = vsnprintf(msg, sizeof(msg), fmt, ap);
        if (n < 0)
                return;
        /* libmicrohttpd's messages end with a newline; logfmt lines do not. */
        for (char *p = msg; *p; p++)
                if (*p == '\n' || *p == '"')
                        *p = *p == '"' ? '\'' : ' ';
        ks_log_warn("http_server_message", "msg=\"%s\"", msg);
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned int status, const char *content_type, void *body,
                             size_t len, enum MHD_ResponseMemoryMode mode)
{
        struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, mode);
        if (!resp) {
                if (mode == MHD_RESPMEM_MUST_FREE)
                        free(body);
                return MHD_NO;
        }
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
        enum MHD_Result r = MHD_queue_response(conn, status, resp);
        MHD_destroy_response(resp);
        return r;
}

static enum MHD_Result reply_text(struct MHD_Connection *conn, unsigned int status, const char *text)
{
        return reply(conn, status, "text/plain; charset=utf-8", (void *)text, strlen(text), MHD_RESPMEM_PERSISTENT);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                              const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls)
{
        (void)version;
        (void)upload_data;
        (void)upload_data_size;
        (void)con_cls;
        ks_http_t *h = cls;
        if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
                return reply_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed: use GET\n");
        if (!strcmp(url, "/metrics")) {
                size_t len = 0;
                char *text = ks_metrics_render(h->metrics, &len);
                if (!text)
                        return reply_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
                return reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, len,
                             MHD_RESPMEM_MUST_FREE);
        }
        if (!strcmp(url, "/healthz"))
                return reply_text(conn, MHD_HTTP_OK, "ok\n");
        if (!strcmp(url, "/readyz")) {
                char why[256] = "";
                if (!h->ready || h->ready(h->opaque, why, sizeof(why)))
                        return reply_text(conn, MHD_HTTP_OK, "ready\n");
                char body[300];
                int n = snprintf(body, sizeof(body), "not ready: %s\n", why[0] ? why : "unknown reason");
                if (n < 0)
                        n = 0;
                if ((size_t)n >= sizeof(body))
                        n = (int)sizeof(body) - 1;
                return reply(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", body, (size_t)n,
                             MHD_RESPMEM_MUST_COPY);
        }
        return reply_text(conn, MHD_HTTP_NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n");
}

ks_http_t *ks_http_start(const char *host, int port, ks_metrics_t *metrics, ks_ready_fn *ready, void *opaque)
{
        ks_http_t *h = calloc(1, sizeof(*h));
        if (!h) {
                ks_log_error("metrics_start_failed", "reason=\"out of memory\"");
                return NULL;
        }
        h->metrics = metrics;
        h->ready = ready;
        h->opaque = opaque;
        int family = AF_INET;
        int fd = ks_listen_tcp(host, port, 64, "metrics_listen_failed", "KAFSCALE_METRICS_ADDR", &h->port, &family);
        if (fd < 0) {
                free(h);
                return NULL;
        }
        unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG;
        if (family == AF_INET6)
                flags |= MHD_USE_IPv6;
        h->daemon = MHD_start_daemon(flags, 0, NULL, NULL, handle, h,
                                     MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                                     MHD_OPTION_LISTEN_SOCKET, fd,
                                     MHD_OPTION_CONNECTION_LIMIT, (unsigned int)HTTP_MAX_CONNECTIONS,
                                     MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)HTTP_IDLE_TIMEOUT_S,
                                     MHD_OPTION_END);
        if (!h->daemon) {
                /* Whether libmicrohttpd closed the socket on this path is not
                 * documented; leave it open rather than risk closing a
                 * descriptor reused by another thread (start-up fails). */
                ks_log_error("metrics_start_failed", "addr=\"%s:%d\" reason=\"libmicrohttpd did not start (see "
                                                     "http_server_message above)\"",
                             host ? host : "", h->port);
                free(h);
                return NULL;
        }
        ks_log_info("metrics_listening", "addr=\"%s:%d\" paths=\"/metrics /healthz /readyz\"",
                    host && host[0] ? host : "0.0.0.0", h->port);
        return h;
}

int ks_http_port(const ks_http_t *h)
{
        return h ? h->port : -1;
}

void ks_http_stop(ks_http_t *h)
{
        if (!h)
                return;
        /* Closes the listening socket too. */
        MHD_stop_daemon(h->daemon);
        free(h);
}
