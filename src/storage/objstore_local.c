/*
 * objstore_local.c — a local directory as an object store (embedded mode).
 *
 * Key "default/orders/0/segment-….kfs" is the file of that path under the
 * store's directory.  Durability of put(), in this order:
 *
 *   1. missing parent directories are created one by one; after each
 *      mkdir the directory holding the new entry is fsync'd;
 *   2. the bytes are written to "<name>.tmp.<pid>.<seq>" beside the target
 *      (writev, partial writes continued), and that file is fsync'd;
 *   3. it is renamed over the target (atomic replace: readers see the old
 *      or the new file, never a mix) and the parent directory is fsync'd.
 *
 * Temporary files hold ".tmp." in their name, which keys may not have in
 * their last segment (objstore.h), so list() skips them and they can never
 * be mistaken for objects.  Left-overs of a crash are deleted when the store
 * is opened — the directory must belong to one process (embedded mode: one
 * broker per data dir).
 *
 * Limits of a file system: a key cannot be both an object and the "folder"
 * of other keys ("a/b" and "a/b/c"); such a put is KS_ERR__INVALID_ARG.
 * Empty directories left by del() stay (removing them would race with a
 * concurrent put into them).
 *
 * Threads: no locks.  Every call uses its own file descriptors, relative to
 * the store's directory descriptor (openat & co.), so calls run in parallel;
 * the temporary-name counter is atomic.
 */
#include "storage/objstore.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "util/log.h"

typedef struct local_store {
        ks_objstore_t base;
        char *dir;    /* as given, for messages */
        int dirfd;    /* the store's root directory */
        uint64_t seq; /* atomic: temporary file names */
} local_store_t;

#define LOCAL_MAX_DEPTH 512 /* a key of KS_OBJSTORE_KEY_MAX bytes has fewer segments */

static ks_err_t io_fail(const local_store_t *ls, const char *op, const char *call, const char *key, int e)
{
        ks_log_error("objstore_local_io_failed", "op=%s call=%s dir=\"%s\" key=\"%s\" errno=%d error=\"%s\"", op, call,
                     ls->dir, key, e, strerror(e));
        return e == ENOMEM ? KS_ERR__NOMEM : KS_ERR__IO;
}

static int close_checked(int fd)
{
        return close(fd) == 0 || errno == EINTR ? 0 : -1;
}

/* Splits key at its last '/': the directory part (possibly "") is copied to
 * dirbuf (KS_OBJSTORE_KEY_MAX + 1 bytes: keys and prefixes are checked to be
 * no longer), the file name is returned (points into key). */
static const char *split_key(const char *key, char dirbuf[KS_OBJSTORE_KEY_MAX + 1])
{
        const char *slash = strrchr(key, '/');
        size_t n = slash ? (size_t)(slash - key) : 0;
        if (n > KS_OBJSTORE_KEY_MAX)
                n = KS_OBJSTORE_KEY_MAX;
        memcpy(dirbuf, key, n);
        dirbuf[n] = '\0';
        return slash ? slash + 1 : key;
}

/* Opens directory `rel` (relative to the root; "" = the root). */
static int open_dir(const local_store_t *ls, const char *rel)
{
        return openat(ls->dirfd, rel[0] ? rel : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

/* Opens the directory `rel` under the root, creating missing components.
 * Each directory created is made durable by fsync'ing its parent.  Returns
 * the fd or -1 with errno set; *failed_call names the failing syscall. */
static int open_dir_create(const local_store_t *ls, const char *rel, const char **failed_call)
{
        char comp[NAME_MAX + 1];
        int fd = open_dir(ls, "");
        const char *p = rel;

        if (fd < 0) {
                *failed_call = "openat";
                return -1;
        }
        while (*p) {
                const char *slash = strchr(p, '/');
                size_t n = slash ? (size_t)(slash - p) : strlen(p);
                if (n > NAME_MAX) {
                        close(fd);
                        errno = ENAMETOOLONG;
                        *failed_call = "openat";
                        return -1;
                }
                memcpy(comp, p, n);
                comp[n] = '\0';
                int sub = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                if (sub < 0 && errno == ENOENT) {
                        if (mkdirat(fd, comp, 0755) == 0) {
                                if (fsync(fd) != 0) {
                                        int e = errno;
                                        close(fd);
                                        errno = e;
                                        *failed_call = "fsync(parent of new directory)";
                                        return -1;
                                }
                        } else if (errno != EEXIST) { /* EEXIST: a concurrent put made it */
                                int e = errno;
                                close(fd);
                                errno = e;
                                *failed_call = "mkdirat";
                                return -1;
                        }
                        sub = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                }
                if (sub < 0) {
                        int e = errno;
                        close(fd);
                        errno = e;
                        *failed_call = "openat";
                        return -1;
                }
                close(fd);
                fd = sub;
                p += n;
                if (*p == '/')
                        p++;
        }
        return fd;
}

/* Writes all iovecs to fd, continuing after partial writes and splitting
 * at IOV_MAX.  Returns 0 or -1 with errno set. */
static int write_all(int fd, const struct iovec *iov_in, int iovcnt)
{
        struct iovec stackv[64];
        struct iovec *v = iovcnt <= 64 ? stackv : malloc((size_t)iovcnt * sizeof(*v));
        int i = 0, rc = 0;

        if (!v) {
                errno = ENOMEM;
                return -1;
        }
        if (iovcnt)
                memcpy(v, iov_in, (size_t)iovcnt * sizeof(*v));
        while (i < iovcnt) {
                if (v[i].iov_len == 0) {
                        i++;
                        continue;
                }
                int cnt = iovcnt - i > IOV_MAX ? IOV_MAX : iovcnt - i;
                ssize_t w = writev(fd, &v[i], cnt);
                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        rc = -1;
                        break;
                }
                size_t left = (size_t)w;
                while (i < iovcnt && left >= v[i].iov_len) {
                        left -= v[i].iov_len;
                        i++;
                }
                if (left) {
                        v[i].iov_base = (char *)v[i].iov_base + left;
                        v[i].iov_len -= left;
                }
        }
        if (v != stackv) {
                int e = errno;
                free(v);
                errno = e;
        }
        return rc;
}

static ks_err_t local_put(ks_objstore_t *s, const char *key, const struct iovec *iov, int iovcnt)
{
        local_store_t *ls = (local_store_t *)s;
        char dir[KS_OBJSTORE_KEY_MAX + 1], tmp[NAME_MAX + 1];
        const char *name, *call = "openat";
        ks_err_t err = ks_objstore_key_check(key);
        int dfd = -1, fd = -1, e;

        if (err)
                return err;
        if (iovcnt < 0 || (iovcnt > 0 && !iov))
                return KS_ERR__INVALID_ARG;
        name = split_key(key, dir);
        dfd = open_dir_create(ls, dir, &call);
        if (dfd < 0) {
                if (errno == ENOTDIR || errno == EEXIST) {
                        ks_log_error("objstore_local_key_conflict",
                                     "op=put dir=\"%s\" key=\"%s\" reason=\"a parent of the key is an object\"",
                                     ls->dir, key);
                        return KS_ERR__INVALID_ARG;
                }
                return io_fail(ls, "put", call, key, errno);
        }
        uint64_t seq = __atomic_add_fetch(&ls->seq, 1, __ATOMIC_RELAXED);
        snprintf(tmp, sizeof(tmp), "%s.tmp.%ld.%llu", name, (long)getpid(), (unsigned long long)seq);

        fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0) {
                err = io_fail(ls, "put", "openat(temporary)", key, errno);
                goto out;
        }
        if (write_all(fd, iov, iovcnt) != 0) {
                err = io_fail(ls, "put", "writev", key, errno);
                goto out_unlink;
        }
        if (fsync(fd) != 0) {
                err = io_fail(ls, "put", "fsync", key, errno);
                goto out_unlink;
        }
        e = close_checked(fd);
        fd = -1;
        if (e != 0) {
                err = io_fail(ls, "put", "close", key, errno);
                goto out_unlink;
        }
        if (renameat(dfd, tmp, dfd, name) != 0) {
                if (errno == EISDIR || errno == ENOTEMPTY || errno == EEXIST) {
                        ks_log_error("objstore_local_key_conflict",
                                     "op=put dir=\"%s\" key=\"%s\" reason=\"the key is a folder of other keys\"",
                                     ls->dir, key);
                        err = KS_ERR__INVALID_ARG;
                } else {
                        err = io_fail(ls, "put", "renameat", key, errno);
                }
                goto out_unlink;
        }
        if (fsync(dfd) != 0) {
                /* The object is in place but its name may not be durable: the
                 * caller must not treat it as stored. */
                err = io_fail(ls, "put", "fsync(directory)", key, errno);
                goto out;
        }
        err = KS_ERR_NONE;
        goto out;
out_unlink:
        if (fd >= 0) {
                close(fd);
                fd = -1;
        }
        unlinkat(dfd, tmp, 0);
out:
        if (fd >= 0)
                close(fd);
        close(dfd);
        return err;
}

static ks_err_t local_get(ks_objstore_t *s, const char *key, int64_t offset, int64_t len, ks_objbuf_t *out)
{
        local_store_t *ls = (local_store_t *)s;
        ks_err_t err = ks_objstore_key_check(key);
        struct stat st;
        int64_t start, n;

        out->data = NULL;
        out->len = 0;
        if (err)
                return err;
        if (offset < 0 || len < -1)
                return KS_ERR__INVALID_ARG;
        int fd = openat(ls->dirfd, key, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
                if (errno == ENOENT || errno == ENOTDIR)
                        return KS_ERR__NOT_FOUND;
                return io_fail(ls, "get", "openat", key, errno);
        }
        if (fstat(fd, &st) != 0) {
                err = io_fail(ls, "get", "fstat", key, errno);
                goto out;
        }
        if (!S_ISREG(st.st_mode)) {
                err = KS_ERR__NOT_FOUND; /* a folder of other keys */
                goto out;
        }
        err = ks_objstore_range_clip((int64_t)st.st_size, offset, len, &start, &n);
        if (err)
                goto out;
        if ((uint64_t)n > SIZE_MAX - 1) {
                err = KS_ERR__TOO_LARGE;
                goto out;
        }
        out->data = malloc(n ? (size_t)n : 1);
        if (!out->data) {
                err = KS_ERR__NOMEM;
                goto out;
        }
        size_t got = 0;
        while (got < (size_t)n) {
                ssize_t r = pread(fd, out->data + got, (size_t)n - got, (off_t)(start + (int64_t)got));
                if (r < 0 && errno == EINTR)
                        continue;
                if (r < 0) {
                        err = io_fail(ls, "get", "pread", key, errno);
                        break;
                }
                if (r == 0) {
                        /* Files are replaced by rename, never truncated in
                         * place: a short file is damage. */
                        ks_log_error("objstore_local_short_read", "dir=\"%s\" key=\"%s\" expected=%lld got=%zu",
                                     ls->dir, key, (long long)n, got);
                        err = KS_ERR__IO;
                        break;
                }
                got += (size_t)r;
        }
        if (err) {
                ks_objbuf_free(out);
                goto out;
        }
        out->len = (size_t)n;
out:
        close(fd);
        return err;
}

static int is_tmp_name(const char *name)
{
        return strstr(name, ".tmp.") != NULL;
}

typedef struct walk {
        local_store_t *ls;
        char path[KS_OBJSTORE_KEY_MAX + NAME_MAX + 2]; /* key being built */
        ks_objlist_t *out;                             /* NULL: clean temporary files instead of listing */
        size_t cap;
        size_t removed;
} walk_t;

/* Visits directory dfd (ownership taken) whose key prefix is w->path[0..plen).
 * At the top level only names starting with name_prefix are visited. */
static ks_err_t walk_dir(walk_t *w, int dfd, size_t plen, const char *name_prefix, int depth)
{
        ks_err_t err = KS_ERR_NONE;
        size_t nplen = name_prefix ? strlen(name_prefix) : 0;
        DIR *d = fdopendir(dfd);

        if (!d) {
                int e = errno;
                close(dfd);
                return io_fail(w->ls, w->out ? "list" : "open", "fdopendir", w->path, e);
        }
        for (;;) {
                errno = 0;
                struct dirent *de = readdir(d);
                if (!de) {
                        if (errno)
                                err = io_fail(w->ls, w->out ? "list" : "open", "readdir", w->path, errno);
                        break;
                }
                const char *name = de->d_name;
                if (!strcmp(name, ".") || !strcmp(name, ".."))
                        continue;
                if (nplen && strncmp(name, name_prefix, nplen) != 0)
                        continue;
                size_t nlen = strlen(name);
                if (plen + nlen + 1 >= sizeof(w->path))
                        continue; /* longer than any key */

                struct stat st;
                if (fstatat(dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
                        if (errno == ENOENT)
                                continue; /* deleted meanwhile */
                        err = io_fail(w->ls, w->out ? "list" : "open", "fstatat", name, errno);
                        break;
                }
                memcpy(w->path + plen, name, nlen + 1);
                if (S_ISDIR(st.st_mode)) {
                        if (depth >= LOCAL_MAX_DEPTH)
                                continue;
                        int sub = openat(dirfd(d), name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
                        if (sub < 0) {
                                if (errno == ENOENT)
                                        continue;
                                err = io_fail(w->ls, w->out ? "list" : "open", "openat", w->path, errno);
                                break;
                        }
                        w->path[plen + nlen] = '/';
                        w->path[plen + nlen + 1] = '\0';
                        err = walk_dir(w, sub, plen + nlen + 1, NULL, depth + 1);
                        if (err)
                                break;
                } else if (S_ISREG(st.st_mode)) {
                        if (is_tmp_name(name)) {
                                if (!w->out && unlinkat(dirfd(d), name, 0) == 0)
                                        w->removed++;
                                continue;
                        }
                        if (!w->out || ks_objstore_key_check(w->path) != KS_ERR_NONE)
                                continue; /* not something put() could have made */
                        err = ks_objlist_push(w->out, &w->cap, w->path, plen + nlen, (int64_t)st.st_size);
                        if (err)
                                break;
                }
        }
        w->path[plen] = '\0';
        closedir(d);
        return err;
}

static ks_err_t local_list(ks_objstore_t *s, const char *prefix, ks_objlist_t *out)
{
        local_store_t *ls = (local_store_t *)s;
        ks_err_t err = ks_objstore_prefix_check(prefix);
        walk_t *w;

        out->items = NULL;
        out->count = 0;
        if (err)
                return err;
        w = calloc(1, sizeof(*w));
        if (!w)
                return KS_ERR__NOMEM;
        w->ls = ls;
        w->out = out;
        /* Start in the deepest directory the prefix names completely. */
        const char *name_prefix = split_key(prefix, w->path);
        int dfd = open_dir(ls, w->path);
        if (dfd < 0) {
                if (errno == ENOENT || errno == ENOTDIR)
                        goto out; /* nothing under this prefix */
                err = io_fail(ls, "list", "openat", prefix, errno);
                goto out;
        }
        size_t plen = strlen(w->path);
        if (plen) {
                w->path[plen++] = '/';
                w->path[plen] = '\0';
        }
        err = walk_dir(w, dfd, plen, name_prefix, 0);
        if (!err)
                ks_objlist_sort(out);
out:
        if (err)
                ks_objlist_free(out);
        free(w);
        return err;
}

static ks_err_t local_del(ks_objstore_t *s, const char *key)
{
        local_store_t *ls = (local_store_t *)s;
        char dir[KS_OBJSTORE_KEY_MAX + 1];
        ks_err_t err = ks_objstore_key_check(key);

        if (err)
                return err;
        const char *name = split_key(key, dir);
        int dfd = open_dir(ls, dir);
        if (dfd < 0) {
                if (errno == ENOENT || errno == ENOTDIR)
                        return KS_ERR_NONE;
                return io_fail(ls, "del", "openat", key, errno);
        }
        if (unlinkat(dfd, name, 0) != 0) {
                /* Missing, or a folder of other keys (not an object): done. */
                if (errno != ENOENT && errno != EISDIR && errno != ENOTDIR)
                        err = io_fail(ls, "del", "unlinkat", key, errno);
        } else if (fsync(dfd) != 0) {
                err = io_fail(ls, "del", "fsync(directory)", key, errno);
        }
        close(dfd);
        return err;
}

static ks_err_t local_check(ks_objstore_t *s, char *err_msg, size_t err_len)
{
        local_store_t *ls = (local_store_t *)s;
        char probe[64];
        int fd;

        if (err_msg && err_len)
                err_msg[0] = '\0';
        /* The probe's name holds ".tmp.", so it is never listed and a
         * left-over is cleaned at the next open. */
        snprintf(probe, sizeof(probe), ".kafscale-check.tmp.%ld.%llu", (long)getpid(),
                 (unsigned long long)__atomic_add_fetch(&ls->seq, 1, __ATOMIC_RELAXED));
        fd = openat(ls->dirfd, probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 || write(fd, "k", 1) != 1 || fsync(fd) != 0) {
                int e = errno;
                if (fd >= 0) {
                        close(fd);
                        unlinkat(ls->dirfd, probe, 0);
                }
                if (err_msg && err_len)
                        snprintf(err_msg, err_len, "local object store directory \"%s\" is not writable: %s", ls->dir,
                                 strerror(e));
                ks_log_error("objstore_local_check_failed", "dir=\"%s\" errno=%d error=\"%s\"", ls->dir, e,
                             strerror(e));
                return KS_ERR__IO;
        }
        close(fd);
        unlinkat(ls->dirfd, probe, 0);
        return KS_ERR_NONE;
}

static void local_destroy(ks_objstore_t *s)
{
        local_store_t *ls = (local_store_t *)s;
        if (ls->dirfd >= 0)
                close(ls->dirfd);
        free(ls->dir);
        free(ls);
}

static const ks_objstore_ops_t local_ops = {
    .name = "local",
    .put = local_put,
    .get = local_get,
    .list = local_list,
    .del = local_del,
    .check = local_check,
    .destroy = local_destroy,
};

/* mkdir -p for the store's own directory; each directory created is made
 * durable by fsync'ing its parent. */
static int mkdir_p(const char *path, const char **failed_call)
{
        char *p = strdup(path);
        int rc = 0;

        if (!p) {
                errno = ENOMEM;
                *failed_call = "strdup";
                return -1;
        }
        size_t len = strlen(p);
        for (size_t i = 1; i <= len && rc == 0; i++) {
                if (p[i] != '/' && p[i] != '\0')
                        continue;
                if (p[i - 1] == '/')
                        continue;
                char saved = p[i];
                p[i] = '\0';
                if (mkdir(p, 0755) == 0) {
                        /* Make the new entry durable in its parent. */
                        char *slash = strrchr(p, '/');
                        const char *parent = ".";
                        if (slash == p)
                                parent = "/";
                        else if (slash) {
                                *slash = '\0';
                                parent = p;
                        }
                        int pfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                        if (pfd < 0 || fsync(pfd) != 0) {
                                *failed_call = pfd < 0 ? "open(parent)" : "fsync(parent)";
                                rc = -1;
                        }
                        if (pfd >= 0) {
                                int e = errno;
                                close(pfd);
                                errno = e;
                        }
                        if (slash && slash != p)
                                *slash = '/';
                } else if (errno != EEXIST) {
                        *failed_call = "mkdir";
                        rc = -1;
                }
                p[i] = saved;
        }
        int e = errno;
        free(p);
        errno = e;
        return rc;
}

ks_err_t ks_objstore_local_new(const char *dir, ks_objstore_t **out)
{
        const char *call = "open";
        local_store_t *ls;

        *out = NULL;
        if (!dir || !dir[0])
                return KS_ERR__INVALID_ARG;
        ls = calloc(1, sizeof(*ls));
        if (!ls || !(ls->dir = strdup(dir))) {
                free(ls);
                return KS_ERR__NOMEM;
        }
        ls->base.ops = &local_ops;
        ls->dirfd = -1;
        if (mkdir_p(dir, &call) != 0 ||
            (call = "open", ls->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
                ks_err_t err = io_fail(ls, "open", call, "", errno);
                local_destroy(&ls->base);
                return err;
        }

        /* Delete temporary files a crash left behind. */
        walk_t *w = calloc(1, sizeof(*w));
        if (!w) {
                local_destroy(&ls->base);
                return KS_ERR__NOMEM;
        }
        w->ls = ls;
        int dfd = open_dir(ls, "");
        ks_err_t err = dfd < 0 ? io_fail(ls, "open", "openat", "", errno) : walk_dir(w, dfd, 0, NULL, 0);
        if (!err && w->removed)
                ks_log_info("objstore_local_tmp_cleaned", "dir=\"%s\" removed=%zu", dir, w->removed);
        free(w);
        if (err) {
                local_destroy(&ls->base);
                return err;
        }
        ks_log_debug("objstore_local_open", "dir=\"%s\"", dir);
        *out = &ls->base;
        return KS_ERR_NONE;
}
