/*
 * lab-nfqdelay: hold the packets of one NFQUEUE queue for a delay (+- jitter), then accept them.
 *
 * The lab's userspace delay path for kernels without sch_netem. It runs inside a lab network namespace
 * (started there with nsenter) and serves one queue that the fault's iptables rules feed with
 * `-j NFQUEUE --queue-num N --queue-bypass`.
 *
 * - No reordering unless --reorder: a packet is never released before one that arrived earlier, so with
 *   jitter the release times are made non-decreasing (and verdicts can be issued in batches).
 * - No drops of its own: a large queue, a large socket buffer, fail-open when the queue is full, and on
 *   SIGTERM every held packet is accepted before exiting (a revert loses nothing).
 * - Bounded CPU: it sleeps in ppoll() until the next release or the next packet; nothing spins.
 * - --mangle-seq RATE: instead of delaying, shift the TCP sequence number of that fraction of TCP segments
 *   carrying data far out of window (the conntrack-invalid fault), fixing the checksum.
 *
 * Prints "ready" on stdout once the queue is bound; counters go to stderr on exit and on SIGUSR1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h> /* before any linux/ header: glibc then suppresses the kernel duplicates */
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <linux/netfilter.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libnetfilter_queue/libnetfilter_queue.h>
#include <libnfnetlink/libnfnetlink.h>

#ifndef NETLINK_NO_ENOBUFS
#define NETLINK_NO_ENOBUFS 5
#endif
#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

typedef struct {
    uint64_t release_ns;
    uint64_t order; /* arrival order: ties keep arrival order */
    uint32_t id;
} held_t;

static held_t *heap;
static size_t heap_len, heap_cap;
static uint64_t delay_ns, jitter_ns, last_release_ns, arrivals;
static int reorder;
static double mangle_rate = -1.0;
static uint64_t rng_state;
static volatile sig_atomic_t stop, dump;
static unsigned long long n_held, n_released, n_mangled, n_enobufs;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t rng(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static double uniform01(void) { return (double)(rng() >> 11) / (double)(1ull << 53); }

static int before(const held_t *a, const held_t *b) {
    return a->release_ns < b->release_ns || (a->release_ns == b->release_ns && a->order < b->order);
}

static void heap_push(held_t h) {
    if (heap_len == heap_cap) {
        heap_cap = heap_cap ? heap_cap * 2 : 4096;
        heap = realloc(heap, heap_cap * sizeof(held_t));
        if (!heap) {
            perror("realloc");
            exit(1);
        }
    }
    size_t i = heap_len++;
    heap[i] = h;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!before(&heap[i], &heap[p])) break;
        held_t t = heap[i];
        heap[i] = heap[p];
        heap[p] = t;
        i = p;
    }
}

static held_t heap_pop(void) {
    held_t top = heap[0];
    heap[0] = heap[--heap_len];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < heap_len && before(&heap[l], &heap[m])) m = l;
        if (r < heap_len && before(&heap[r], &heap[m])) m = r;
        if (m == i) break;
        held_t t = heap[i];
        heap[i] = heap[m];
        heap[m] = t;
        i = m;
    }
    return top;
}

static uint16_t csum_fold(uint32_t sum) {
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/* Shift the sequence number of a TCP segment with data by 2^30 and fix the TCP checksum (RFC 1624). */
static int mangle_seq(unsigned char *pkt, int len) {
    if (len < (int)sizeof(struct iphdr)) return 0;
    struct iphdr *ip = (struct iphdr *)pkt;
    int ihl = ip->ihl * 4;
    if (ip->protocol != IPPROTO_TCP || len < ihl + (int)sizeof(struct tcphdr)) return 0;
    struct tcphdr *tcp = (struct tcphdr *)(pkt + ihl);
    int payload = ntohs(ip->tot_len) - ihl - tcp->doff * 4;
    if (payload <= 0 || tcp->syn || tcp->rst || tcp->fin) return 0;
    uint32_t old_seq = ntohl(tcp->seq), new_seq = old_seq + 0x40000000u;
    uint32_t sum = (uint16_t)~ntohs(tcp->check);
    sum += (uint16_t)~(old_seq >> 16) + (uint16_t)~(old_seq & 0xffff);
    sum += (new_seq >> 16) + (new_seq & 0xffff);
    tcp->seq = htonl(new_seq);
    tcp->check = htons(csum_fold(sum));
    return 1;
}

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa, void *data) {
    (void)msg;
    (void)data;
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    if (!ph) return 0;
    uint32_t id = ntohl(ph->packet_id);
    if (mangle_rate >= 0) {
        unsigned char *pkt = NULL;
        int len = nfq_get_payload(nfa, &pkt);
        if (len > 0 && uniform01() < mangle_rate && mangle_seq(pkt, len)) {
            n_mangled++;
            return nfq_set_verdict(qh, id, NF_ACCEPT, (uint32_t)len, pkt);
        }
        return nfq_set_verdict(qh, id, NF_ACCEPT, 0, NULL);
    }
    uint64_t now = now_ns(), d = delay_ns;
    if (jitter_ns) {
        double j = (uniform01() * 2.0 - 1.0) * (double)jitter_ns;
        d = (double)delay_ns + j < 0 ? 0 : (uint64_t)((double)delay_ns + j);
    }
    uint64_t release = now + d;
    if (!reorder && release < last_release_ns) release = last_release_ns;
    last_release_ns = release;
    heap_push((held_t){release, arrivals++, id});
    n_held++;
    return 0;
}

/* Accept every held packet due by `t` (all of them when t == UINT64_MAX). */
static void release_due(struct nfq_q_handle *qh, uint64_t t) {
    if (!reorder) {
        /* Non-decreasing release times and increasing ids: the due packets are a prefix, one batch verdict. */
        uint32_t last = 0;
        int any = 0;
        while (heap_len && heap[0].release_ns <= t) {
            last = heap_pop().id;
            any = 1;
            n_released++;
        }
        if (any) nfq_set_verdict_batch(qh, last, NF_ACCEPT);
        return;
    }
    while (heap_len && heap[0].release_ns <= t) {
        nfq_set_verdict(qh, heap_pop().id, NF_ACCEPT, 0, NULL);
        n_released++;
    }
}

static void on_signal(int sig) {
    if (sig == SIGUSR1)
        dump = 1;
    else
        stop = 1;
}

static void report(void) {
    fprintf(stderr, "lab-nfqdelay: held=%llu released=%llu mangled=%llu enobufs=%llu waiting=%zu\n", n_held,
            n_released, n_mangled, n_enobufs, heap_len);
}

static void usage(void) {
    fprintf(stderr,
            "usage: lab-nfqdelay --queue N [--delay-us D] [--jitter-us J] [--reorder] [--mangle-seq RATE]\n"
            "       [--seed S]   (run inside the namespace whose iptables rules feed queue N)\n");
    exit(2);
}

int main(int argc, char **argv) {
    int queue = -1;
    unsigned long long seed = 0;
    static struct option opts[] = {{"queue", required_argument, 0, 'q'},    {"delay-us", required_argument, 0, 'd'},
                                   {"jitter-us", required_argument, 0, 'j'}, {"reorder", no_argument, 0, 'r'},
                                   {"mangle-seq", required_argument, 0, 'm'}, {"seed", required_argument, 0, 's'},
                                   {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'q': queue = atoi(optarg); break;
        case 'd': delay_ns = strtoull(optarg, NULL, 10) * 1000ull; break;
        case 'j': jitter_ns = strtoull(optarg, NULL, 10) * 1000ull; break;
        case 'r': reorder = 1; break;
        case 'm': mangle_rate = atof(optarg); break;
        case 's': seed = strtoull(optarg, NULL, 10); break;
        default: usage();
        }
    }
    if (queue < 0 || queue > 65535 || jitter_ns > delay_ns) usage();
    rng_state = seed ? seed : (now_ns() ^ ((uint64_t)getpid() << 32)) | 1;

    struct nfq_handle *h = nfq_open();
    if (!h) {
        perror("nfq_open");
        return 1;
    }
    nfq_unbind_pf(h, AF_INET); /* older kernels want this; harmless elsewhere */
    if (nfq_bind_pf(h, AF_INET) < 0) {
        perror("nfq_bind_pf");
        return 1;
    }
    struct nfq_q_handle *qh = nfq_create_queue(h, (uint16_t)queue, &on_packet, NULL);
    if (!qh) {
        fprintf(stderr, "lab-nfqdelay: cannot bind queue %d (in use?)\n", queue);
        return 1;
    }
    int copy = mangle_rate >= 0 ? NFQNL_COPY_PACKET : NFQNL_COPY_META;
    if (nfq_set_mode(qh, copy, 0xffff) < 0) {
        perror("nfq_set_mode");
        return 1;
    }
    nfq_set_queue_maxlen(qh, 65536);
    nfq_set_queue_flags(qh, NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_FAIL_OPEN);
    nfnl_rcvbufsiz(nfq_nfnlh(h), 16 * 1024 * 1024);
    int fd = nfq_fd(h), one = 1;
    setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof(one));

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    printf("ready\n");
    fflush(stdout);

    static char buf[65536 + 4096] __attribute__((aligned));
    while (!stop) {
        struct timespec ts, *tsp = NULL;
        if (heap_len) {
            uint64_t now = now_ns(), next = heap[0].release_ns;
            uint64_t wait = next > now ? next - now : 0;
            ts.tv_sec = (time_t)(wait / 1000000000ull);
            ts.tv_nsec = (long)(wait % 1000000000ull);
            tsp = &ts;
        }
        struct pollfd pfd = {fd, POLLIN, 0};
        int n = ppoll(&pfd, 1, tsp, NULL);
        if (n < 0 && errno != EINTR) {
            perror("ppoll");
            break;
        }
        if (n > 0) {
            for (;;) { /* drain everything queued now, then release what is due */
                ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
                if (r < 0) {
                    if (errno == ENOBUFS) {
                        n_enobufs++;
                        continue;
                    }
                    break;
                }
                nfq_handle_packet(h, buf, (int)r);
            }
        }
        release_due(qh, now_ns());
        if (dump) {
            dump = 0;
            report();
        }
    }
    release_due(qh, UINT64_MAX); /* never lose a packet on the way out */
    report();
    nfq_destroy_queue(qh);
    nfq_close(h);
    return 0;
}
