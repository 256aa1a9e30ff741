/*
 * listen.h — one way to open a listening TCP socket, shared by the Kafka
 * listener and the HTTP endpoint.
 */
#ifndef KS_NET_LISTEN_H
#define KS_NET_LISTEN_H

/* Binds and listens (non-blocking, close-on-exec, SO_REUSEADDR) on
 * host:port; "" or NULL means all interfaces, IPv4 preferred as Kafka does.
 * Returns the fd and sets *bound_port (useful with port 0) and *family (may
 * be NULL), or -1 after logging `event` with the cause and a hint naming
 * the configuration variable `var` to fix. */
int ks_listen_tcp(const char *host, int port, int backlog, const char *event, const char *var, int *bound_port,
                  int *family);

#endif
