/* The cps and rtt clients of bench_tun.py, and the conn/s client of bench_workers.py, in C, so
 * that the client's own cost does not bound the figures. cps and rtt do what client_cps /
 * client_rtt in bench_tun.py do; conc does what client_cps in bench_workers.py does (CONCURRENCY
 * non-blocking connections in flight from the wall-clock START_AT on). Each prints one line of
 * JSON with the same keys, or {"error": ...} and exit status 1.
 *
 *   bench_client cps HOST PORT COUNT SECONDS
 *   bench_client rtt HOST PORT COUNT SIZE SECONDS
 *   bench_client conc HOST PORT SECONDS CONCURRENCY START_AT
 *
 * Build: cc -std=c99 -O2 -Wall -Wextra -o bench_client bench_client.c
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define IO_TIMEOUT_S 5          /* connect, send and each recv: as the Python client's 5 s */
#define EOF_WAIT_NS 5000000000LL /* wait for the peer's FIN at most this long */
#define EOF_MAX_READS 1000000   /* and at most this many reads */
#define WARMUP_MAX 200
#define CONC_MAX 100000         /* connections in flight in conc mode, at most */
#define CONC_POLL_MS 200        /* epoll_wait timeout: as the Python client's select(0.2) */
#define START_WAIT_MAX_S 3600.0 /* a START_AT further away is a mistake, not a plan */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Prints {"error": "WHAT: DETAIL"} (DETAIL escaped for JSON) and exits 1. */
static void fail(const char *what, const char *detail)
{
    printf("{\"error\": \"");
    for (const char *s = what; *s; s++)
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s >= 0x20)
            putchar(*s);
    printf(": ");
    for (const char *s = detail; *s; s++)
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s >= 0x20)
            putchar(*s);
    printf("\"}\n");
    fflush(stdout);
    exit(1);
}

static void fail_errno(const char *what)
{
    fail(what, strerror(errno));
}

static long long parse_count(const char *text, const char *what)
{
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || end == text || *end || v < 0)
        fail(what, "not a non-negative integer");
    return v;
}

static double parse_seconds(const char *text, const char *what)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || !(v >= 0.0) || v > 1e6)
        fail(what, "not a number of seconds in [0, 1e6]");
    return v;
}

/* A wall-clock time in epoch seconds (may have a fraction). */
static double parse_epoch(const char *text)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || !(v >= 0.0) || v > 1e11)
        fail("bad START_AT", "not epoch seconds");
    return v;
}

/* The peer's address from a numeric IPv4 or IPv6 HOST. */
struct peer {
    struct sockaddr_storage addr;
    socklen_t len;
    int family;
};

static struct peer parse_peer(const char *host, const char *port_text)
{
    struct peer p;
    long long port = parse_count(port_text, "bad PORT");
    if (port < 1 || port > 65535)
        fail("bad PORT", "not in 1..65535");
    memset(&p, 0, sizeof p);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&p.addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&p.addr;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        p.len = sizeof *v4;
        p.family = AF_INET;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        p.len = sizeof *v6;
        p.family = AF_INET6;
    } else {
        fail("bad HOST", "not a numeric IPv4 or IPv6 address");
    }
    return p;
}

/* A blocking, connected socket whose connect, sends and receives give up after IO_TIMEOUT_S. */
static int connect_to(const struct peer *p)
{
    int fd = socket(p->family, SOCK_STREAM, 0);
    if (fd < 0)
        fail_errno("socket");
    struct timeval tv = {IO_TIMEOUT_S, 0};
    if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0
        || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0)
        fail_errno("setsockopt timeout");
    /* Linux bounds a blocking connect by SO_SNDTIMEO (EINPROGRESS when it expires). */
    for (int tries = 0; connect(fd, (const struct sockaddr *)&p->addr, p->len) < 0; tries++) {
        if (errno == EINPROGRESS || errno == EAGAIN)
            fail("connect", "timed out");
        if (errno != EINTR || tries >= 100)
            fail_errno("connect");
    }
    return fd;
}

static void send_all(int fd, const unsigned char *data, size_t len)
{
    size_t sent = 0;
    for (int tries = 0; sent < len && tries < 1000000; tries++) {
        ssize_t n = send(fd, data + sent, len - sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fail_errno(errno == EAGAIN || errno == EWOULDBLOCK ? "send timed out" : "send");
        }
        sent += (size_t)n;
    }
    if (sent < len)
        fail("send", "no progress");
}

static ssize_t recv_some(int fd, void *buf, size_t len)
{
    for (int tries = 0; tries < 100; tries++) {
        ssize_t n = recv(fd, buf, len, 0);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            fail_errno(errno == EAGAIN || errno == EWOULDBLOCK ? "recv timed out" : "recv");
    }
    fail("recv", "interrupted too often");
    return -1;
}

/* Reads until the peer's FIN; returns the stray bytes read on the way. */
static long long wait_eof(int fd)
{
    static unsigned char buf[65536];
    int64_t deadline = now_ns() + EOF_WAIT_NS;
    long long stray = 0;
    for (int i = 0; i < EOF_MAX_READS; i++) {
        ssize_t n = recv_some(fd, buf, sizeof buf);
        if (n == 0)
            return stray;
        stray += n;
        if (now_ns() >= deadline)
            break;
    }
    fail("wait for EOF", "peer never closed");
    return stray;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Nanosecond samples, sorted in place; p50 and p99 by the Python client's indices. */
static void percentiles(int64_t *samples, long long n, double *p50_us, double *p99_us)
{
    qsort(samples, (size_t)n, sizeof *samples, cmp_i64);
    long long i99 = n * 99 / 100;
    *p50_us = (double)samples[n / 2] / 1e3;
    *p99_us = (double)samples[i99 < n - 1 ? i99 : n - 1] / 1e3;
}

static int run_cps(const struct peer *p, long long count, double seconds)
{
    int64_t *latencies = malloc((size_t)(count ? count : 1) * sizeof *latencies);
    if (!latencies)
        fail_errno("malloc");
    long long n = 0;
    int64_t start = now_ns();
    int64_t deadline = start + (int64_t)(seconds * 1e9);
    for (long long i = 0; i < count; i++) {
        int64_t t0 = now_ns();
        if (t0 >= deadline)
            break;
        int fd = connect_to(p);
        unsigned char byte = 'x';
        send_all(fd, &byte, 1);
        if (recv_some(fd, &byte, 1) != 1 || byte != 'x')
            fail("echo", "returned something else");
        if (shutdown(fd, SHUT_WR) < 0)
            fail_errno("shutdown");
        if (wait_eof(fd))
            fail("echo", "returned extra bytes");
        close(fd);
        latencies[n++] = now_ns() - t0;
    }
    double elapsed = (double)(now_ns() - start) / 1e9;
    printf("{\"connections\": %lld, \"seconds\": %.9f, \"cps\": %.3f, ", n, elapsed,
           elapsed > 0 ? (double)n / elapsed : 0.0);
    if (n) {
        double p50, p99;
        percentiles(latencies, n, &p50, &p99);
        printf("\"p50_us\": %.3f, \"p99_us\": %.3f}\n", p50, p99);
    } else {
        printf("\"p50_us\": null, \"p99_us\": null}\n");
    }
    free(latencies);
    return 0;
}

static int run_rtt(const struct peer *p, long long count, long long size, double seconds)
{
    if (size > (1LL << 30))
        fail("bad SIZE", "more than 1 GiB");
    size_t len = (size_t)size;
    unsigned char *message = malloc(len ? len : 1);
    unsigned char *buf = calloc(len ? len : 1, 1);
    int64_t *samples = malloc((size_t)(count ? count : 1) * sizeof *samples);
    if (!message || !buf || !samples)
        fail_errno("malloc");
    for (size_t i = 0; i < len; i++)
        message[i] = (unsigned char)(i & 0xFF);
    int fd = connect_to(p);
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
        fail_errno("setsockopt TCP_NODELAY");
    long long warmup = count < WARMUP_MAX ? count : WARMUP_MAX;
    long long n = 0;
    int64_t start = now_ns();
    int64_t deadline = start + (int64_t)(seconds * 1e9);
    for (long long i = 0; i < warmup + count; i++) {
        if (now_ns() >= deadline)
            break;
        int64_t t0 = now_ns();
        send_all(fd, message, len);
        size_t got = 0;
        while (got < len) {  /* bounded: each recv gives at least one byte or fails */
            ssize_t r = recv_some(fd, buf + got, len - got);
            if (r == 0)
                fail("echo", "closed early");
            got += (size_t)r;
        }
        int64_t t1 = now_ns();
        if (i >= warmup)
            samples[n++] = t1 - t0;
    }
    if (memcmp(buf, message, len) != 0)
        fail("echo", "returned different bytes");
    if (shutdown(fd, SHUT_WR) < 0)
        fail_errno("shutdown");
    wait_eof(fd);
    close(fd);
    if (!n)
        fail("rtt", "no round trip within the time bound");
    double elapsed = (double)(now_ns() - start) / 1e9;
    double p50, p99, sum = 0;
    for (long long i = 0; i < n; i++)
        sum += (double)samples[i];
    percentiles(samples, n, &p50, &p99);
    printf("{\"round_trips\": %lld, \"size\": %lld, \"seconds\": %.9f, \"p50_us\": %.3f, "
           "\"p99_us\": %.3f, \"mean_us\": %.3f, \"min_us\": %.3f, \"truncated\": %s}\n",
           n, size, elapsed, p50, p99, sum / (double)n / 1e3, (double)samples[0] / 1e3,
           n < count ? "true" : "false");
    free(samples);
    free(buf);
    free(message);
    return 0;
}

/* conc mode: each slot of the pool holds one connection; its epoll tag is slot << 1 | phase. */
enum { PHASE_CONNECTING = 0, PHASE_ECHO = 1 };

struct pool {
    const struct peer *peer;
    int epoll_fd;
    int *fds;
};

static void pool_open(struct pool *pool, long long slot)
{
    int fd = socket(pool->peer->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        fail_errno("socket");
    if (connect(fd, (const struct sockaddr *)&pool->peer->addr, pool->peer->len) < 0
        && errno != EINPROGRESS)
        fail_errno("connect");
    /* An immediate connect also reports writable at once, so both take the same path. */
    struct epoll_event ev = {.events = EPOLLOUT,
                             .data.u64 = (uint64_t)slot << 1 | PHASE_CONNECTING};
    if (epoll_ctl(pool->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0)
        fail_errno("epoll_ctl add");
    pool->fds[slot] = fd;
}

/* On writable: whether the connect succeeded and the byte went out (then it waits for the echo). */
static int pool_send(struct pool *pool, long long slot)
{
    int fd = pool->fds[slot], err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0)
        return 0;
    unsigned char byte = 'x';
    if (send(fd, &byte, 1, MSG_NOSIGNAL) != 1)
        return 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)slot << 1 | PHASE_ECHO};
    if (epoll_ctl(pool->epoll_fd, EPOLL_CTL_MOD, fd, &ev) < 0)
        fail_errno("epoll_ctl mod");
    return 1;
}

static void sleep_until_epoch(double start_at)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    double wait = start_at - ((double)now.tv_sec + (double)now.tv_nsec / 1e9);
    if (wait > START_WAIT_MAX_S)
        fail("bad START_AT", "more than an hour away");
    if (wait <= 0)
        return;
    struct timespec until = {(time_t)start_at, 0};
    until.tv_nsec = (long)((start_at - (double)until.tv_sec) * 1e9);
    if (until.tv_nsec > 999999999L)
        until.tv_nsec = 999999999L;
    for (int tries = 0; tries < 100; tries++) {
        int rc = clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &until, NULL);
        if (rc != EINTR)
            return;
    }
}

/* Room for `want` descriptors besides stdio and epoll, if the hard limit allows. */
static void raise_fd_limit(long long want)
{
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) < 0 || lim.rlim_cur == RLIM_INFINITY)
        return;
    rlim_t need = (rlim_t)want + 16;
    if (lim.rlim_cur >= need)
        return;
    lim.rlim_cur = lim.rlim_max == RLIM_INFINITY || lim.rlim_max >= need ? need : lim.rlim_max;
    setrlimit(RLIMIT_NOFILE, &lim);  /* if refused, socket() reports EMFILE later */
}

static double cpu_seconds(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) < 0)
        return 0.0;
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec)
           + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static int run_conc(const struct peer *p, double seconds, long long width, double start_at)
{
    if (width < 1 || width > CONC_MAX)
        fail("bad CONCURRENCY", "not in 1..100000");
    raise_fd_limit(width);
    int max_events = width < 1024 ? (int)width : 1024;
    struct epoll_event *events = malloc((size_t)max_events * sizeof *events);
    struct pool pool = {p, -1, malloc((size_t)width * sizeof(int))};
    if (!events || !pool.fds)
        fail_errno("malloc");
    pool.epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (pool.epoll_fd < 0)
        fail_errno("epoll_create1");
    sleep_until_epoch(start_at);  /* all client processes start together */
    long long done = 0, errors = 0;
    int64_t deadline = now_ns() + (int64_t)(seconds * 1e9);
    for (long long slot = 0; slot < width; slot++)
        pool_open(&pool, slot);
    /* Bounded by time: each pass waits at most until the deadline. */
    for (int64_t now = now_ns(); now < deadline; now = now_ns()) {
        int64_t left_ms = (deadline - now + 999999) / 1000000;
        int n = epoll_wait(pool.epoll_fd, events, max_events,
                           left_ms < CONC_POLL_MS ? (int)left_ms : CONC_POLL_MS);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fail_errno("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            long long slot = (long long)(events[i].data.u64 >> 1);
            int ok;
            if ((events[i].data.u64 & 1) == PHASE_CONNECTING) {
                if (pool_send(&pool, slot))
                    continue;
                ok = 0;
            } else {
                unsigned char byte = 0;
                ok = recv(pool.fds[slot], &byte, 1, 0) == 1 && byte == 'x';
            }
            close(pool.fds[slot]);  /* also takes it out of the epoll set */
            done += ok;
            errors += !ok;
            pool_open(&pool, slot);
        }
    }
    for (long long slot = 0; slot < width; slot++)
        close(pool.fds[slot]);
    close(pool.epoll_fd);
    free(pool.fds);
    free(events);
    printf("{\"connections\": %lld, \"errors\": %lld, \"seconds\": %.17g, \"cpu_s\": %.6f}\n",
           done, errors, seconds, cpu_seconds());
    return 0;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);  /* a reset peer is an error to report, not a silent death */
    if (argc == 6 && strcmp(argv[1], "cps") == 0) {
        struct peer p = parse_peer(argv[2], argv[3]);
        return run_cps(&p, parse_count(argv[4], "bad COUNT"), parse_seconds(argv[5], "bad SECONDS"));
    }
    if (argc == 7 && strcmp(argv[1], "rtt") == 0) {
        struct peer p = parse_peer(argv[2], argv[3]);
        return run_rtt(&p, parse_count(argv[4], "bad COUNT"), parse_count(argv[5], "bad SIZE"),
                       parse_seconds(argv[6], "bad SECONDS"));
    }
    if (argc == 7 && strcmp(argv[1], "conc") == 0) {
        struct peer p = parse_peer(argv[2], argv[3]);
        return run_conc(&p, parse_seconds(argv[4], "bad SECONDS"),
                        parse_count(argv[5], "bad CONCURRENCY"), parse_epoch(argv[6]));
    }
    fail("usage", "bench_client cps HOST PORT COUNT SECONDS | rtt HOST PORT COUNT SIZE SECONDS"
                  " | conc HOST PORT SECONDS CONCURRENCY START_AT");
    return 1;
}
