#include "net/listen.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util/log.h"

int ks_listen_tcp(const char *host, int port, int backlog, const char *event, const char *var, int *bound_port,
                  int *family)
{
        struct addrinfo hints = { 0 }, *res = NULL;
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
        char portstr[16];
        snprintf(portstr, sizeof(portstr), "%d", port);
        const char *h = host && host[0] ? host : NULL;
        int rc = getaddrinfo(h, portstr, &hints, &res);
        if (rc != 0) {
                ks_log_error(event, "host=\"%s\" port=%d err=\"%s\" fix=\"check %s\"", h ? h : "", port,
                             gai_strerror(rc), var);
                return -1;
        }
        /* Prefer IPv4 for the wildcard (0.0.0.0), as Kafka does by default. */
        struct addrinfo *ai = res;
        for (struct addrinfo *it = res; it; it = it->ai_next)
                if (it->ai_family == AF_INET) {
                        ai = it;
                        break;
                }
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
                ks_log_error(event, "call=socket errno=%d err=\"%s\"", errno, strerror(errno));
                freeaddrinfo(res);
                return -1;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, backlog) != 0) {
                int e = errno;
                ks_log_error(event, "addr=\"%s:%d\" errno=%d err=\"%s\" fix=\"choose a free port with %s\"",
                             h ? h : "", port, e, strerror(e), var);
                close(fd);
                freeaddrinfo(res);
                return -1;
        }
        if (family)
                *family = ai->ai_family;
        freeaddrinfo(res);
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
                *bound_port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                                            : ((struct sockaddr_in6 *)&ss)->sin6_port);
        else
                *bound_port = port;
        return fd;
}
