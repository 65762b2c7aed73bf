/* The express path: lone packets through a node's data path without the interpreter.

   A lone packet (a ping, a 64-byte datagram, a TCP ACK) pays the interpreter's fixed cost
   per read, and after a pause that cost is mostly cache misses: on a 2-core VM a packet
   that arrives 20 ms after the last took about 200 us of Python per hop, the same steps
   as compiled code about 50. Here the common case runs in C from the read to the write,
   on tables the engine fills (express.py), and everything else is handed back, unopened,
   to the Python path that has always handled it:

     on_tun()   tunneld0 is readable: a lone IPv4 packet (a checksum left in its own
                TCP/UDP header or none) or a TCP super-packet (cut as segment.cut does)
                to a peer in `send`, not a TCP SYN nor VXLAN (their MSS is clamped in
                Python), is sealed and sent to the peer's endpoint; where the session's
                lane runs out of counters, source.from_tun_train(the rest, now)
     on_udp()   the socket is readable: a DATA datagram (alone, or in a GRO train) from a
                peer's endpoint (not inside the overlay), or RELAYED from the relay with
                the peer's address, in a session of `recv` whose endpoint it came from, of
                our lane, not stale by the backlog's rules (backlog.py), is opened (relayed:
                source.relay_heard(session, now) at most every RELAY_HEARD_EVERY); an IPv4 packet from
                the peer's own address (or a prefix it may send from), or an IPv6 one from its
                IPv6 overlay address (prefix6 + its IPv4 address), goes to tunneld0
                as offload.single() writes it, TCP in a GRO train by way of the coalescer, a
                keepalive only counts. Anything else opened goes to source.opened(session,
                peer, plaintext, msg, ep, now) (ep None: the relay), the engine's own code
                after opening.

   Each is the event loop's reader callback itself, no Python frame before it. It reads
   until the socket is drained or `limit` reads; the first read it does not carry goes,
   with the time, to slow_tun(bytes, now) or slow_udp((data, gso_size, (host, port),
   kernel_time), now), an int for a read's errno: the Python path, which reads on from there.

   The tables come from source.tables() whenever source.versioned.version moves (checked
   before each callback and after the engine's code ran in one):
     send: {dst (4 bytes): (seal, prefix, endpoint, peer)}
     recv: {index (4 bytes): (session, open, peer, peer address (4 bytes), endpoint, sources)}
     endpoint: 4 address bytes + 2 port bytes, big-endian; sources: the peer's accepted
     prefixes as (network, mask) pairs of 4 bytes each, big-endian; overlay: (network, mask)
     or None; routes: the accepted prefixes as (network, mask, peer address), 12 bytes each,
     longest first; prefix6: the IPv6 overlay prefix's first 12 bytes, or None
     -> (send, recv, overlay, lane, count, routes, prefix6)
   relay(endpoint or None)   where the relay speaks from (None: not over UDP); only RELAYED
                             DATA from there is ours, and the tables are taken again

   Counters go where the Python path puts them: the peer's tx_bytes, tx_packets, last_tx,
   rx_bytes, rx_packets and last_rx attributes, the drops Counter (a failed open's reason, a full socket). One
   process, one thread (the event loop's).
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <endian.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define BUF (65535 + 64)
#define DATA_TYPE 3         /* wire.DATA */
#define RELAYED_TYPE 4      /* wire.RELAYED: type, 3 bytes, the other node's address, its message */
#define RELAYED_LEN 8       /* wire.RELAYED_HEADER_LEN */
#define RELAY_HEARD_EVERY 0.25  /* engine/lanes.py's: how often the engine hears that the relay is there */
#define PARTIAL_TYPE 3      /* wire.PARTIAL: a deeper checksum's place, before a packet for the coalescer */
#define DATA_MIN 32         /* wire.DATA_HEADER_LEN + wire.TAG_LEN */
#define VNET_LEN 10         /* offload.VNET_HDR_LEN: the fields we set; a longer header is zero past them */
#define NEEDS_CSUM 1
#define GSO_TCPV4 1
#define GSO_UDP_TUNNEL_IPV4 0x20  /* tunnel_split.py */
#define VNET_TNL_LEN 24
#define GSO_ECN 0x80
#define VXLAN_PORT 8472     /* mss.VXLAN_PORT: its inner SYNs are clamped in Python */
#define SOL_UDP_ 17
#define UDP_GRO_ 104
#define TARGET 0.005        /* backlog.TARGET */
#define INTERVAL 0.1        /* backlog.INTERVAL */
#define UDP_SEGMENT_ 103
#define MAX_SEGMENTS 64     /* udpio.MAX_SEGMENTS */
#define MAX_BYTES 65000     /* udpio.MAX_BYTES */
#define PENDING 64          /* dataplane.WRITE_BATCH */

static PyObject *s_tx_bytes, *s_last_tx, *s_rx_bytes, *s_last_rx, *s_last_drop, *s_watch_until, *s_version;
static PyObject *s_tx_packets, *s_rx_packets;

typedef struct {
    PyObject_HEAD
    int tun, udp, vnet_len;
    PyObject *send, *recv;                /* dicts, see load() */
    PyObject *routes;                     /* bytes: (network, mask, peer address) longest first */
    PyObject *drops;                      /* the data plane's Counter */
    PyObject *send_full, *send_error, *tun_write_error, *stale_drop;  /* its Drop members */
    PyObject *opened;                     /* the engine's code after opening */
    PyObject *backlog;                    /* backlog.Backlog: a fresh read ends its watch */
    PyObject *source;                     /* express.py's: tables(), opened() and versioned */
    PyObject *versioned;                  /* the engine's object whose .version moves with its tables */
    PyObject *slow_tun, *slow_udp;        /* the Python paths, from a read we hand back */
    PyObject *merge;                      /* the data plane's: packets for its coalescer */
    PyObject *pending;                    /* a list: a train's packets to merge, in order */
    long loaded;                          /* the source's version our tables are of */
    double relay_heard_at;                /* when we last told source.relay_heard */
    uint32_t ov_net, ov_mask;
    unsigned char prefix6[12];            /* the IPv6 overlay prefix's first 12 bytes (engine/inner.py) */
    int has_p6;
    int has_ov, lane, count, has_relay, limit;
    unsigned char relay[6];
    unsigned long long sent, received;    /* packets that took the express path */
    unsigned long long gso_sends, gro_reads, super_reads, tunnel_reads;  /* as udpio.py and dataplane.py count */
    /* the outgoing train (udpio.Batch's rules): datagrams of one size (the last may be
       shorter) to one endpoint, sent in one sendmsg with UDP_SEGMENT */
    struct sockaddr_in out_to;
    Py_ssize_t out_len, out_seg, max_segment;
    int out_n, out_ended, gso;
    unsigned char out[MAX_BYTES];
    unsigned char seg[MAX_BYTES];         /* a super-packet's segment, cut */
    unsigned char buf[BUF];
} Express;

static uint16_t be16(const unsigned char *p) { return (uint16_t)((p[0] << 8) | p[1]); }

static uint32_t be32(const unsigned char *p) { return ((uint32_t)be16(p) << 16) | be16(p + 2); }

static void put16(unsigned char *p, uint32_t v) {
    p[0] = (v >> 8) & 0xFF;
    p[1] = v & 0xFF;
}

static uint32_t fold(uint32_t c) {
    c = (c & 0xFFFF) + (c >> 16);
    return (c & 0xFFFF) + (c >> 16);
}

/* The first entry of a table of (network, mask, ...) entries, stride bytes each, big-endian,
   whose prefix holds addr (routes.longest, routes.within); NULL: none. */
static const unsigned char *matching(PyObject *table, Py_ssize_t stride, const unsigned char *addr) {
    const unsigned char *t = (const unsigned char *)PyBytes_AS_STRING(table);
    Py_ssize_t n = PyBytes_GET_SIZE(table);
    uint32_t a = be32(addr);
    for (Py_ssize_t i = 0; i + stride <= n; i += stride)
        if ((a & be32(t + i + 4)) == be32(t + i)) return t + i;
    return NULL;
}

/* A packet as the Python path carries one whose checksum lies deeper: behind wire.PARTIAL's
   header naming the place (offload.py, tunnel_split.py). */
static PyObject *partial_packet(const unsigned char *packet, Py_ssize_t m, int start, int offset) {
    PyObject *out = PyBytes_FromStringAndSize(NULL, m + 5);
    if (out == NULL) return NULL;
    unsigned char *w = (unsigned char *)PyBytes_AS_STRING(out);
    w[0] = PARTIAL_TYPE;
    put16(w + 1, start);
    put16(w + 3, offset);
    memcpy(w + 5, packet, m);
    return out;
}

static int bump_by(PyObject *counter, PyObject *key, long by) {
    PyObject *v = PyDict_GetItemWithError(counter, key);
    if (v == NULL && PyErr_Occurred()) return -1;
    long n = v == NULL ? 0 : PyLong_AsLong(v);
    if (n == -1 && PyErr_Occurred()) return -1;
    PyObject *w = PyLong_FromLong(n + by);
    if (w == NULL) return -1;
    int r = PyDict_SetItem(counter, key, w);
    Py_DECREF(w);
    return r;
}

static int bump(PyObject *counter, PyObject *key) { return bump_by(counter, key, 1); }

static int add_attr(PyObject *o, PyObject *name, Py_ssize_t n) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL) return -1;
    PyObject *d = PyLong_FromSsize_t(n);
    if (d == NULL) { Py_DECREF(v); return -1; }
    PyObject *s = PyNumber_Add(v, d);
    Py_DECREF(v);
    Py_DECREF(d);
    if (s == NULL) return -1;
    int r = PyObject_SetAttr(o, name, s);
    Py_DECREF(s);
    return r;
}

static int set_time(PyObject *o, PyObject *name, PyObject *now) { return PyObject_SetAttr(o, name, now); }

static int endpoint(PyObject *ep, unsigned char out[6]) {
    if (!PyBytes_Check(ep) || PyBytes_GET_SIZE(ep) != 6) {
        PyErr_SetString(PyExc_ValueError, "an endpoint is 6 bytes: address and port");
        return -1;
    }
    memcpy(out, PyBytes_AS_STRING(ep), 6);
    return 0;
}

static void Express_dealloc(Express *self) {
    Py_XDECREF(self->send);
    Py_XDECREF(self->recv);
    Py_XDECREF(self->routes);
    Py_XDECREF(self->drops);
    Py_XDECREF(self->send_full);
    Py_XDECREF(self->send_error);
    Py_XDECREF(self->tun_write_error);
    Py_XDECREF(self->stale_drop);
    Py_XDECREF(self->opened);
    Py_XDECREF(self->backlog);
    Py_XDECREF(self->source);
    Py_XDECREF(self->versioned);
    Py_XDECREF(self->slow_tun);
    Py_XDECREF(self->slow_udp);
    Py_XDECREF(self->merge);
    Py_XDECREF(self->pending);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Express_init(Express *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"tun", "udp", "vnet_len", "drops", "reasons", "source", "backlog", "slow_tun",
                            "slow_udp", "merge", "limit", "max_segment", NULL};
    PyObject *drops, *reasons, *source, *backlog, *slow_tun, *slow_udp, *merge;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiiO!OOOOOOin", names, &self->tun, &self->udp, &self->vnet_len,
                                     &PyDict_Type, &drops, &reasons, &source, &backlog, &slow_tun, &slow_udp,
                                     &merge, &self->limit, &self->max_segment))
        return -1;
    Py_XSETREF(self->merge, Py_NewRef(merge));
    Py_XSETREF(self->pending, PyList_New(0));
    if (self->pending == NULL) return -1;
    self->gso = 1;
    self->out_n = 0;
    PyObject *opened = PyObject_GetAttrString(source, "opened");
    if (opened == NULL) return -1;
    Py_XSETREF(self->opened, opened);
    PyObject *versioned = PyObject_GetAttrString(source, "versioned");
    if (versioned == NULL) return -1;
    Py_XSETREF(self->versioned, versioned);
    Py_XSETREF(self->source, Py_NewRef(source));
    Py_XSETREF(self->slow_tun, Py_NewRef(slow_tun));
    Py_XSETREF(self->slow_udp, Py_NewRef(slow_udp));
    self->loaded = -1;
    if (self->vnet_len < VNET_LEN || self->vnet_len > 64) {
        PyErr_SetString(PyExc_ValueError, "vnet_len: 10 to 64");
        return -1;
    }
    if (!PyTuple_Check(reasons) || PyTuple_GET_SIZE(reasons) != 4) {
        PyErr_SetString(PyExc_ValueError, "reasons: (send_full, send_error, tun_write_error, stale)");
        return -1;
    }
    Py_XSETREF(self->drops, Py_NewRef(drops));
    Py_XSETREF(self->send_full, Py_NewRef(PyTuple_GET_ITEM(reasons, 0)));
    Py_XSETREF(self->send_error, Py_NewRef(PyTuple_GET_ITEM(reasons, 1)));
    Py_XSETREF(self->tun_write_error, Py_NewRef(PyTuple_GET_ITEM(reasons, 2)));
    Py_XSETREF(self->stale_drop, Py_NewRef(PyTuple_GET_ITEM(reasons, 3)));
    Py_XSETREF(self->backlog, Py_NewRef(backlog));
    Py_XSETREF(self->send, PyDict_New());
    Py_XSETREF(self->recv, PyDict_New());
    self->count = 1;
    return self->send && self->recv ? 0 : -1;
}

static int load(Express *self, PyObject *tables) {
    PyObject *send, *recv, *overlay, *routes, *prefix6;
    int lane, count;
    if (!PyArg_ParseTuple(tables, "O!O!OiiSO", &PyDict_Type, &send, &PyDict_Type, &recv, &overlay, &lane, &count,
                          &routes, &prefix6))
        return -1;
    if (prefix6 != Py_None && !(PyBytes_Check(prefix6) && PyBytes_GET_SIZE(prefix6) == 12)) {
        PyErr_SetString(PyExc_ValueError, "prefix6: 12 bytes or None");
        return -1;
    }
    self->has_p6 = prefix6 != Py_None;
    if (self->has_p6) memcpy(self->prefix6, PyBytes_AS_STRING(prefix6), 12);
    if (PyBytes_GET_SIZE(routes) % 12) {
        PyErr_SetString(PyExc_ValueError, "routes: (network, mask, peer address), 12 bytes each");
        return -1;
    }
    Py_XSETREF(self->routes, Py_NewRef(routes));
    if (count < 1 || lane < 0 || lane >= count) {
        PyErr_SetString(PyExc_ValueError, "lane: 0 to count - 1");
        return -1;
    }
    if (overlay == Py_None) {
        self->has_ov = 0;
    } else {
        unsigned long net, mask;
        if (!PyArg_ParseTuple(overlay, "kk", &net, &mask)) return -1;
        self->ov_net = (uint32_t)net;
        self->ov_mask = (uint32_t)mask;
        self->has_ov = 1;
    }
    Py_XSETREF(self->send, Py_NewRef(send));
    Py_XSETREF(self->recv, Py_NewRef(recv));
    self->lane = lane;
    self->count = count;
    return 0;
}

/* The tables again when the source's version moved (a session, a path, a peer): before
   every callback, and after the engine's code ran in one. */
static int follow(Express *self) {
    PyObject *v = PyObject_GetAttr(self->versioned, s_version);
    if (v == NULL) return -1;
    long version = PyLong_AsLong(v);
    Py_DECREF(v);
    if (version == -1 && PyErr_Occurred()) return -1;
    if (version == self->loaded) return 0;
    PyObject *tables = PyObject_CallMethod(self->source, "tables", NULL);
    if (tables == NULL) return -1;
    int r = load(self, tables);
    Py_DECREF(tables);
    if (r == 0) self->loaded = version;
    return r;
}

static PyObject *monotonic(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return PyFloat_FromDouble(t.tv_sec + t.tv_nsec * 1e-9);
}

static PyObject *Express_relay(Express *self, PyObject *ep) {
    self->loaded = -1;  /* the tables again: relayed peers' entries follow the relay */
    if (ep == Py_None) {
        self->has_relay = 0;
        Py_RETURN_NONE;
    }
    if (endpoint(ep, self->relay) < 0) return NULL;
    self->has_relay = 1;
    Py_RETURN_NONE;
}

/* -- tunneld0 -> wire ------------------------------------------------------------------ */

static int send_one(Express *self, const void *data, Py_ssize_t n, const struct sockaddr_in *to) {
    if (sendto(self->udp, data, n, 0, (const struct sockaddr *)to, sizeof *to) >= 0) return 0;
    return bump(self->drops, (errno == EAGAIN || errno == EWOULDBLOCK) ? self->send_full : self->send_error);
}

static int flush_out(Express *self) {
    int n = self->out_n;
    if (n == 0) return 0;
    self->out_n = 0;
    if (n > 1 && self->gso) {
        char control[CMSG_SPACE(sizeof(uint16_t))] = {0};
        struct iovec iov = {.iov_base = self->out, .iov_len = self->out_len};
        struct msghdr mh = {.msg_name = &self->out_to, .msg_namelen = sizeof self->out_to, .msg_iov = &iov,
                            .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_UDP_;
        c->cmsg_type = UDP_SEGMENT_;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t seg = (uint16_t)self->out_seg;
        memcpy(CMSG_DATA(c), &seg, sizeof seg);
        if (sendmsg(self->udp, &mh, 0) >= 0) {
            self->gso_sends++;
            return 0;
        }
        int err = errno;
        if (err == EAGAIN || err == EWOULDBLOCK) return bump_by(self->drops, self->send_full, n);
        if (err == EIO || err == EINVAL || err == ENOPROTOOPT || err == EOPNOTSUPP)
            self->gso = 0;  /* no segmentation offload on this route: one by one, for good */
        else if (err != EMSGSIZE)  /* EMSGSIZE: larger than the route's MTU, fragmented alone */
            return bump_by(self->drops, self->send_error, n);
    }
    for (Py_ssize_t off = 0; off < self->out_len; off += self->out_seg) {
        Py_ssize_t len = self->out_len - off < self->out_seg ? self->out_len - off : self->out_seg;
        if (send_one(self, self->out + off, len, &self->out_to) < 0) return -1;
    }
    return 0;
}

/* As udpio.Batch.send: the datagram joins the train, or the train leaves and it starts one. */
static int send_train(Express *self, const char *data, Py_ssize_t n, const struct sockaddr_in *to) {
    if (n > self->max_segment) {  /* alone, in order: the kernel fragments it, a train it would refuse */
        if (flush_out(self) < 0) return -1;
        return send_one(self, data, n, to);
    }
    if (self->out_n && !self->out_ended && n <= self->out_seg && self->out_n < MAX_SEGMENTS &&
        self->out_len + n <= MAX_BYTES && to->sin_addr.s_addr == self->out_to.sin_addr.s_addr &&
        to->sin_port == self->out_to.sin_port) {
        memcpy(self->out + self->out_len, data, n);
        self->out_len += n;
        self->out_n++;
        if (n < self->out_seg) self->out_ended = 1;  /* only the last may be short */
        return 0;
    }
    if (flush_out(self) < 0) return -1;
    memcpy(self->out, data, n);
    self->out_len = self->out_seg = n;
    self->out_n = 1;
    self->out_ended = 0;
    self->out_to = *to;
    return 0;
}

/* Sealed and on its way (in the outgoing train): 0, or 1 where the session's lane ran out
   of counters (nothing sent), -1: an exception. */
static int seal_send(Express *self, PyObject *seal, PyObject *prefix, const struct sockaddr_in *to,
                     const unsigned char *packet, Py_ssize_t len, PyObject *meta) {
    PyObject *pkt = PyBytes_FromStringAndSize((const char *)packet, len);
    if (pkt == NULL) return -1;
    PyObject *argv[3] = {pkt, prefix, meta};
    PyObject *sealed = PyObject_Vectorcall(seal, argv, meta ? 3 : 2, NULL);
    Py_DECREF(pkt);
    if (sealed == NULL) return -1;
    if (sealed == Py_None || !PyBytes_Check(sealed)) {
        Py_DECREF(sealed);
        return 1;
    }
    int r = send_train(self, PyBytes_AS_STRING(sealed), PyBytes_GET_SIZE(sealed), to);
    Py_DECREF(sealed);
    if (r == 0) self->sent++;
    return r;
}

/* An IPv4 header's checksum field, its own zero while summed. */
static void ip_checksum(unsigned char *hdr, int len) {
    uint32_t c = 0;
    hdr[10] = hdr[11] = 0;
    for (int i = 0; i < len; i += 2) c += be16(hdr + i);
    put16(hdr + 10, ~fold(c) & 0xFFFF);
}

/* As segment.cut: segment k of the super-packet p (len bytes) cut at gso into seg; its
   length. The TCP/IPv4 stream at nh and th, the headers h long; outer_th >= 0: inside a UDP
   tunnel (VXLAN) whose outer IPv4 header starts at 0 and whose UDP header is at outer_th.
   Only what varies is written: the IPv4 total lengths, ids and checksums, the outer UDP
   length (its checksum zero), the sequence number, the flags (CWR on the first segment, PSH
   and FIN on the last); the TCP checksum stays the partial sum the kernel left, or in a
   tunnel becomes the pseudo-header's, for the receiving kernel to complete (offload.py). */
static Py_ssize_t segment(unsigned char *seg, const unsigned char *p, Py_ssize_t len, int nh, int th, int h,
                          int outer_th, int gso, Py_ssize_t k) {
    Py_ssize_t off = h + k * gso, size = len - off < gso ? len - off : gso;
    int flags = p[th + 13];
    uint32_t seq = be32(p + th + 4) + (uint32_t)(k * gso);
    memcpy(seg, p, h);
    memcpy(seg + h, p + off, size);
    if (k > 0) flags &= ~0x80;               /* CWR: the first only */
    if (off + size < len) flags &= ~0x09;    /* PSH and FIN: the last only */
    seg[th + 13] = flags;
    uint32_t total = (uint32_t)(h + size);
    if (outer_th >= 0) {
        put16(seg + 2, total);
        put16(seg + 4, be16(p + 4) + k);
        ip_checksum(seg, outer_th);
        put16(seg + outer_th + 4, total - outer_th);
        put16(seg + outer_th + 6, 0);
        uint32_t pseudo = be16(p + nh + 12) + be16(p + nh + 14) + be16(p + nh + 16) + be16(p + nh + 18) + 6;
        put16(seg + th + 16, fold(pseudo + total - th));
    }
    put16(seg + nh + 2, total - nh);
    put16(seg + nh + 4, be16(p + nh + 4) + k);
    ip_checksum(seg + nh, th - nh);
    seg[th + 4] = seq >> 24;
    seg[th + 5] = (seq >> 16) & 0xFF;
    seg[th + 6] = (seq >> 8) & 0xFF;
    seg[th + 7] = seq & 0xFF;
    return total;
}

/* The send entry for a destination: its peer's own address, or the peer of the longest
   accepted prefix that holds it (routes.longest). NULL, without an exception: none. */
static PyObject *sender(Express *self, const unsigned char *dst) {
    PyObject *k = PyBytes_FromStringAndSize((const char *)dst, 4);
    if (k == NULL) return NULL;
    PyObject *entry = PyDict_GetItemWithError(self->send, k);
    Py_DECREF(k);
    if (entry != NULL || PyErr_Occurred() || self->routes == NULL) return entry;
    const unsigned char *route = matching(self->routes, 12, dst);
    if (route == NULL) return NULL;
    k = PyBytes_FromStringAndSize((const char *)route + 8, 4);
    if (k == NULL) return NULL;
    entry = PyDict_GetItemWithError(self->send, k);
    Py_DECREF(k);
    return entry;
}

/* 0: sent (or dropped and counted), 1: for the Python path, -1: an exception */
static int tun_one(Express *self, Py_ssize_t n, PyObject *now) {
    const unsigned char *b = self->buf, *p = b + self->vnet_len;
    Py_ssize_t len = n - self->vnet_len;
    int gso_type = b[1] & ~GSO_ECN;
    int tunnel = gso_type == (GSO_UDP_TUNNEL_IPV4 | GSO_TCPV4) && self->vnet_len >= VNET_TNL_LEN;
    if (len < 20 || (gso_type != 0 && gso_type != GSO_TCPV4 && !tunnel) || p[0] >> 4 != 4) return 1;
    int ihl = (p[0] & 0x0F) * 4, proto = p[9], nh = 0, th = ihl, outer_th = -1, h = 0, gso = 0;
    uint16_t start, offset, size;
    memcpy(&size, b + 4, 2);
    memcpy(&start, b + 6, 2);
    memcpy(&offset, b + 8, 2);
    if (ihl < 20 || len < ihl + (proto == 6 ? 20 : proto == 17 ? 4 : 0)) return 1;
    if (tunnel) {  /* flannel's VXLAN whole: the checks of tunnel_split.split_udp_tunnel4 */
        uint16_t offsets[2];
        memcpy(offsets, b + 20, 4);  /* outer UDP header, inner IPv4 header: little-endian */
        outer_th = le16toh(offsets[0]);
        nh = le16toh(offsets[1]);
        th = start;
        if (len < th + 20 || ihl != outer_th || proto != 17 || nh < outer_th + 8 || p[nh] >> 4 != 4 ||
            p[nh + 9] != 6 || th != nh + (p[nh] & 0x0F) * 4 || th > 255)
            return 1;
    } else if (!gso_type && (b[0] & NEEDS_CSUM)) {  /* a partial checksum is fine in the packet's own header only */
        if (start != ihl || !((proto == 6 && offset == 16) || (proto == 17 && offset == 6))) return 1;
    }
    if (gso_type) {  /* a TCP super-packet (offload._split_tcp4's checks), else Python's to drop */
        gso = size;
        h = th + (p[th + 12] >> 4) * 4;
        if ((!tunnel && proto != 6) || gso == 0 || h < th + 20 || h >= len || h + gso > MAX_BYTES) return 1;
    }
    if ((proto == 6 || tunnel) && (p[th + 13] & 0x02)) return 1;  /* a SYN: its MSS is clamped */
    if (proto == 17 && !tunnel && ((p[ihl + 2] << 8) | p[ihl + 3]) == VXLAN_PORT) return 1;
    PyObject *entry = sender(self, p + 16);
    if (entry == NULL) return PyErr_Occurred() ? -1 : 1;
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 4) return 1;
    PyObject *seal = PyTuple_GET_ITEM(entry, 0), *prefix = PyTuple_GET_ITEM(entry, 1);
    PyObject *ep = PyTuple_GET_ITEM(entry, 2), *peer = PyTuple_GET_ITEM(entry, 3);
    if (!PyBytes_Check(ep) || PyBytes_GET_SIZE(ep) != 6) return 1;
    struct sockaddr_in to = {.sin_family = AF_INET};
    const char *e = PyBytes_AS_STRING(ep);
    memcpy(&to.sin_addr, e, 4);
    memcpy(&to.sin_port, e + 4, 2);
    if (!gso) {
        int r = seal_send(self, seal, prefix, &to, p, len, NULL);
        if (r != 0) return r;  /* out of counters: the Python path hands it on */
        return add_attr(peer, s_tx_bytes, len) < 0 || add_attr(peer, s_tx_packets, 1) < 0 ||
               set_time(peer, s_last_tx, now) < 0 ? -1 : 0;
    }
    if (tunnel)
        self->tunnel_reads++;
    else
        self->super_reads++;
    /* in a tunnel, the inner TCP checksum's place goes in the DATA header (wire.py) */
    PyObject *meta = NULL;
    if (tunnel && (meta = PyBytes_FromStringAndSize((const char[]){(char)th, 16, 0}, 3)) == NULL) return -1;
    Py_ssize_t count = (len - h + gso - 1) / gso, sent = 0, k = 0, packets = 0;
    for (; k < count; k++) {
        Py_ssize_t m = segment(self->seg, p, len, nh, th, h, outer_th, gso, k);
        int r = seal_send(self, seal, prefix, &to, self->seg, m, meta);
        if (r < 0) {
            Py_XDECREF(meta);
            return -1;
        }
        if (r > 0) break;
        sent += m;
        packets++;
    }
    Py_XDECREF(meta);
    if (k < count) {  /* the lane ran out of counters: the engine has the rest, as from_tun_train */
        PyObject *rest = PyList_New(0);
        if (rest == NULL || flush_out(self) < 0) {
            Py_XDECREF(rest);
            return -1;
        }
        for (; k < count; k++) {
            Py_ssize_t m = segment(self->seg, p, len, nh, th, h, outer_th, gso, k);
            PyObject *seg = tunnel ? partial_packet(self->seg, m, th, 16)
                                   : PyBytes_FromStringAndSize((const char *)self->seg, m);
            if (seg == NULL || PyList_Append(rest, seg) < 0) {
                Py_XDECREF(seg);
                Py_DECREF(rest);
                return -1;
            }
            Py_DECREF(seg);
        }
        PyObject *r = PyObject_CallMethod(self->source, "from_tun_train", "OO", rest, now);
        Py_DECREF(rest);
        if (r == NULL) return -1;
        Py_DECREF(r);
    }
    if (sent && (add_attr(peer, s_tx_bytes, sent) < 0 || add_attr(peer, s_tx_packets, packets) < 0 ||
                 set_time(peer, s_last_tx, now) < 0))
        return -1;
    return 0;
}

/* None: drained, True: the limit reached, an int: read's errno, bytes: for the Python path */
static PyObject *tun_reads(Express *self, PyObject *now) {
    for (int i = 0; i < self->limit; i++) {
        ssize_t n = read(self->tun, self->buf, BUF);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) Py_RETURN_NONE;
            if (errno == EINTR) continue;
            return PyLong_FromLong(errno);
        }
        int r = tun_one(self, n, now);
        if (r < 0) return NULL;
        if (r > 0) return PyBytes_FromStringAndSize((const char *)self->buf, n);
    }
    Py_RETURN_TRUE;
}

static PyObject *tun_reads_sent(Express *self, PyObject *now) {
    PyObject *got = tun_reads(self, now);
    if (flush_out(self) < 0) {  /* ours leave before anything the Python path sends */
        Py_XDECREF(got);
        return NULL;
    }
    return got;
}

/* The Python path's turn, from the first read we hand back (if any). */
static PyObject *finish(Express *self, PyObject *got, PyObject *slow, PyObject *now) {
    if (got == NULL || got == Py_None || got == Py_True) {
        Py_DECREF(now);
        if (got == NULL) return NULL;
        Py_DECREF(got);
        Py_RETURN_NONE;
    }
    PyObject *argv[2] = {got, now};
    PyObject *r = PyObject_Vectorcall(slow, argv, 2, NULL);
    Py_DECREF(got);
    Py_DECREF(now);
    return r;
}

/* A readiness callback: the tables followed, our reads, then the Python path's. */
static PyObject *callback(Express *self, PyObject *(*reads)(Express *, PyObject *), PyObject *slow) {
    PyObject *now = monotonic();
    if (now == NULL) return NULL;
    if (follow(self) < 0) {
        Py_DECREF(now);
        return NULL;
    }
    return finish(self, reads(self, now), slow, now);
}

static PyObject *Express_on_tun(Express *self, PyObject *unused) {
    return callback(self, tun_reads_sent, self->slow_tun);
}

/* -- wire -> tunneld0 ------------------------------------------------------------------ */

/* As offload.single(): TCP, and UDP with a checksum, as NEEDS_CSUM over the pseudo-header's
   sum (the sender left the checksum to us, its AEAD tag covers every byte); the rest plain. */
static int write_tun(Express *self, const unsigned char *q, Py_ssize_t n, const unsigned char *meta) {
    unsigned char hdr[64] = {0};
    unsigned char field[2];
    int v6 = q[0] >> 4 == 6;
    int ihl = v6 ? 40 : (q[0] & 0x0F) * 4, proto = v6 ? q[6] : q[9], at = 0;
    if (meta[0]) {  /* a deeper checksum, its place from the DATA header (wire.py): the kernel's */
        uint16_t start = meta[0], offset = meta[1];
        hdr[0] = NEEDS_CSUM;
        memcpy(hdr + 6, &start, 2);
        memcpy(hdr + 8, &offset, 2);
        struct iovec v[2] = {{.iov_base = hdr, .iov_len = self->vnet_len}, {.iov_base = (void *)q, .iov_len = n}};
        if (writev(self->tun, v, 2) < 0) return bump(self->drops, self->tun_write_error);
        return 0;
    }
    if (v6 || !((q[6] & 0x3F) || q[7] || ihl < 20)) {  /* IPv6: TCP or UDP right after its header */
        if (proto == 6) {
            at = ihl + 16;
        } else if (proto == 17) {
            at = ihl + 6;
            if (n >= at + 2 && q[at] == 0 && q[at + 1] == 0) at = 0;  /* UDP without a checksum */
        }
        if (at && n < at + 2) at = 0;
    }
    struct iovec iov[4];
    int k = 0;
    iov[k].iov_base = hdr;
    iov[k++].iov_len = self->vnet_len;
    if (at) {
        uint16_t start = ihl, offset = at - ihl;
        hdr[0] = NEEDS_CSUM;
        memcpy(hdr + 6, &start, 2);
        memcpy(hdr + 8, &offset, 2);
        uint32_t sum = proto + (uint32_t)(n - ihl);
        for (int i = v6 ? 8 : 12; i < (v6 ? 40 : 20); i += 2) sum += be16(q + i);  /* the pseudo-header's addresses */
        put16(field, fold(sum));
        iov[k].iov_base = (void *)q;
        iov[k++].iov_len = at;
        iov[k].iov_base = field;
        iov[k++].iov_len = 2;
        iov[k].iov_base = (void *)(q + at + 2);
        iov[k++].iov_len = n - at - 2;
    } else {
        iov[k].iov_base = (void *)q;
        iov[k++].iov_len = n;
    }
    if (writev(self->tun, iov, k) < 0) return bump(self->drops, self->tun_write_error);
    return 0;
}

/* As routes.within: the inner source in one of the peer's accepted prefixes, packed as
   (network, mask) pairs of big-endian 32-bit words. */
static int within(const unsigned char *src, PyObject *sources) { return matching(sources, 8, src) != NULL; }

/* A train's packets wait in `pending` for the coalescer (merge), so that TCP segments leave
   as one super-packet; once one waits, all after it in the train wait, in order. */
static int flush_pending(Express *self) {
    if (PyList_GET_SIZE(self->pending) == 0) return 0;
    PyObject *packets = self->pending;
    self->pending = PyList_New(0);
    if (self->pending == NULL) {
        self->pending = packets;
        return -1;
    }
    PyObject *r = PyObject_Vectorcall(self->merge, &packets, 1, NULL);
    Py_DECREF(packets);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

static int keep(Express *self, PyObject *plaintext, const unsigned char *meta) {
    PyObject *item = meta[0] ? partial_packet((const unsigned char *)PyBytes_AS_STRING(plaintext),
                                              PyBytes_GET_SIZE(plaintext), meta[0], meta[1])
                             : Py_NewRef(plaintext);
    if (item == NULL) return -1;
    int r = PyList_Append(self->pending, item);
    Py_DECREF(item);
    if (r == 0 && PyList_GET_SIZE(self->pending) >= PENDING) return flush_pending(self);
    return r;
}

/* One datagram d of n bytes (alone, or one of a train): 0: done with, 1: for the Python
   path, 2: done with, and the engine's tables may have moved, -1: an exception */
static int udp_one(Express *self, const unsigned char *d, Py_ssize_t n, const struct sockaddr_in *from,
                   PyObject *now, int train, int relayed) {
    const unsigned char *other = NULL;  /* relayed: the sending node's address, as the relay says */
    if (relayed) {
        if (n < RELAYED_LEN + DATA_MIN || d[0] != RELAYED_TYPE) return 1;
        other = d + 4;
        d += RELAYED_LEN;
        n -= RELAYED_LEN;
    }
    if (n < DATA_MIN || d[0] != DATA_TYPE) return 1;
    if (self->count > 1 && d[8] % self->count != self->lane) return 1;
    uint32_t ip = ntohl(from->sin_addr.s_addr);
    if (!relayed && self->has_ov && (ip & self->ov_mask) == self->ov_net) return 1;
    PyObject *key = PyBytes_FromStringAndSize((const char *)d + 4, 4);
    if (key == NULL) return -1;
    PyObject *entry = PyDict_GetItemWithError(self->recv, key);
    Py_DECREF(key);
    if (entry == NULL) return PyErr_Occurred() ? -1 : 1;
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 6) return 1;
    PyObject *session = PyTuple_GET_ITEM(entry, 0), *open = PyTuple_GET_ITEM(entry, 1);
    PyObject *peer = PyTuple_GET_ITEM(entry, 2), *addr = PyTuple_GET_ITEM(entry, 3), *ep = PyTuple_GET_ITEM(entry, 4);
    PyObject *sources = PyTuple_GET_ITEM(entry, 5);
    if (!PyBytes_Check(ep) || PyBytes_GET_SIZE(ep) != 6 || !PyBytes_Check(addr) || PyBytes_GET_SIZE(addr) != 4 ||
        !PyBytes_Check(sources) || PyBytes_GET_SIZE(sources) % 8)
        return 1;
    const char *e = PyBytes_AS_STRING(ep);
    if (memcmp(e, &from->sin_addr, 4) || memcmp(e + 4, &from->sin_port, 2)) return 1;  /* a new path: the engine's */
    if (relayed && memcmp(other, PyBytes_AS_STRING(addr), 4)) return 1;  /* another node's session */
    PyObject *msg = PyBytes_FromStringAndSize((const char *)d, n);
    if (msg == NULL) return -1;
    PyObject *plaintext = PyObject_Vectorcall(open, &msg, 1, NULL);
    if (plaintext == NULL) {
        Py_DECREF(msg);
        return -1;
    }
    int r = 0;
    if (plaintext == Py_None || !PyBytes_Check(plaintext)) {
        PyObject *reason = PyObject_GetAttr(session, s_last_drop);
        r = reason == NULL ? -1 : bump(self->drops, reason);
        Py_XDECREF(reason);
        goto done;
    }
    self->received++;
    if (set_time(peer, s_last_rx, now) < 0) {
        r = -1;
        goto done;
    }
    if (relayed && PyFloat_AS_DOUBLE(now) - self->relay_heard_at >= RELAY_HEARD_EVERY) {
        /* the relay is there: under a flood its own pongs may queue behind its DATA */
        self->relay_heard_at = PyFloat_AS_DOUBLE(now);
        PyObject *heard = PyObject_CallMethod(self->source, "relay_heard", "OO", session, now);
        if (heard == NULL) {
            r = -1;
            goto done;
        }
        Py_DECREF(heard);
    }
    Py_ssize_t m = PyBytes_GET_SIZE(plaintext);
    const unsigned char *q = (const unsigned char *)PyBytes_AS_STRING(plaintext);
    const unsigned char meta[2] = {d[1], d[2]};
    if (m == 0) goto done;  /* a keepalive: last_rx is all it says */
    if ((q[0] >> 4 == 4 && m >= 20 && (!memcmp(q + 12, PyBytes_AS_STRING(addr), 4) || within(q + 12, sources))) ||
        (q[0] >> 4 == 6 && m >= 40 && self->has_p6 && !memcmp(q + 8, self->prefix6, 12) &&
         !memcmp(q + 20, PyBytes_AS_STRING(addr), 4))) {  /* IPv6: from the peer's overlay address */
        if (add_attr(peer, s_rx_bytes, m) < 0 || add_attr(peer, s_rx_packets, 1) < 0)
            r = -1;
        else if (train && ((q[0] >> 4 == 6 ? q[6] : q[9]) == 6 || meta[0] || PyList_GET_SIZE(self->pending)))
            r = keep(self, plaintext, meta);
        else
            r = write_tun(self, q, m, meta);
        goto done;
    }
    /* a probe, a routed source, or something to drop: the engine's, after what waits */
    PyObject *host = NULL, *via = NULL;
    if (flush_pending(self) < 0) {
        r = -1;
        goto done;
    }
    if (relayed) {
        via = Py_NewRef(Py_None);  /* the relay: express.py makes it RELAY */
    } else if ((host = PyUnicode_FromString(inet_ntoa(from->sin_addr))) == NULL ||
               (via = Py_BuildValue("(Ni)", host, ntohs(from->sin_port))) == NULL) {
        r = -1;
        goto done;
    }
    PyObject *argv[6] = {session, peer, plaintext, msg, via, now};
    PyObject *none = PyObject_Vectorcall(self->opened, argv, 6, NULL);
    Py_DECREF(via);
    if (none == NULL) {
        r = -1;
        goto done;
    }
    Py_DECREF(none);
    r = 2;
done:
    Py_DECREF(msg);
    Py_DECREF(plaintext);
    return r;
}

static int set_watch(Express *self, double until) {
    PyObject *v = PyFloat_FromDouble(until);
    int r = v == NULL ? -1 : PyObject_SetAttr(self->backlog, s_watch_until, v);
    Py_XDECREF(v);
    return r;
}

/* As backlog.py's Backlog.stale, on its state: 1 where the read (n bytes in buf, taken in
   by the kernel at `at`) is peers' data behind a standing queue, dropped and counted;
   0 to go on with it; -1: an exception. */
static int stale(Express *self, Py_ssize_t n, int gso, int relayed, double at) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    double now = t.tv_sec + t.tv_nsec * 1e-9;
    PyObject *w = PyObject_GetAttr(self->backlog, s_watch_until);
    if (w == NULL) return -1;
    double until = PyFloat_AsDouble(w);
    Py_DECREF(w);
    if (until == -1.0 && PyErr_Occurred()) return -1;
    if (now - at < TARGET) return until != 0.0 ? set_watch(self, 0.0) : 0;
    if (until == 0.0) return set_watch(self, now + INTERVAL);
    const unsigned char *d = self->buf;
    /* only the peers' data: relayed DATA, or DATA from anyone but the relay (whose DATA is
       its link's control, pongs among it) */
    int peers = relayed ? n > RELAYED_LEN && d[0] == RELAYED_TYPE && d[RELAYED_LEN] == DATA_TYPE : d[0] == DATA_TYPE;
    if (now < until || !peers) return 0;
    return bump_by(self->drops, self->stale_drop, gso > 0 && n > gso ? (long)((n + gso - 1) / gso) : 1) < 0 ? -1 : 1;
}

static PyObject *udp_reads(Express *self, PyObject *now) {
    for (int i = 0; i < self->limit; i++) {
        struct sockaddr_in from;
        char control[CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(struct timespec))];
        struct iovec iov = {.iov_base = self->buf, .iov_len = 65535};
        struct msghdr mh = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov, .msg_iovlen = 1,
                            .msg_control = control, .msg_controllen = sizeof control};
        ssize_t n = recvmsg(self->udp, &mh, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) Py_RETURN_NONE;
            if (errno == EINTR) continue;
            return PyLong_FromLong(errno);
        }
        int gso = 0;
        double at = 0.0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c)) {
            if (c->cmsg_level == SOL_UDP_ && c->cmsg_type == UDP_GRO_) {
                memcpy(&gso, CMSG_DATA(c), sizeof gso);
            } else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                struct timespec ts;
                memcpy(&ts, CMSG_DATA(c), sizeof ts);
                at = ts.tv_sec + ts.tv_nsec * 1e-9;
            }
        }
        int hand = from.sin_family != AF_INET || mh.msg_namelen < sizeof from;
        int relayed = !hand && self->has_relay && !memcmp(self->relay, &from.sin_addr, 4) &&
                      !memcmp(self->relay + 4, &from.sin_port, 2);
        if (!hand && at) {
            int r = stale(self, n, gso, relayed, at);
            if (r < 0) return NULL;
            if (r > 0) continue;
        }
        /* a GRO train's datagrams one by one; the first we do not carry goes back with the
           rest of its train behind it */
        Py_ssize_t seg = gso > 0 && n > gso ? gso : n, off = 0;
        int r = hand;
        if (!hand && seg < n) self->gro_reads++;
        while (!r && off < n) {
            Py_ssize_t len = n - off < seg ? n - off : seg;
            r = udp_one(self, self->buf + off, len, &from, now, seg < n, relayed);
            if (r == 2) r = follow(self);  /* the engine's code ran: it may have moved the tables */
            if (r == 0) off += len;
        }
        if (r < 0 || flush_pending(self) < 0) return NULL;
        if (r == 1) {
            if (from.sin_family != AF_INET)
                return Py_BuildValue("(y#i(si)d)", self->buf + off, (Py_ssize_t)(n - off), gso, "", 0, at);
            return Py_BuildValue("(y#i(si)d)", self->buf + off, (Py_ssize_t)(n - off), gso,
                                 inet_ntoa(from.sin_addr), ntohs(from.sin_port), at);
        }
    }
    Py_RETURN_TRUE;
}

static PyObject *Express_on_udp(Express *self, PyObject *unused) {
    return callback(self, udp_reads, self->slow_udp);
}


static PyMethodDef Express_methods[] = {
    {"relay", (PyCFunction)Express_relay, METH_O, "relay(endpoint or None)"},
    {"on_tun", (PyCFunction)Express_on_tun, METH_NOARGS, "tunneld0 is readable"},
    {"on_udp", (PyCFunction)Express_on_udp, METH_NOARGS, "the UDP socket is readable"},
    {NULL}};

static PyObject *Express_get_counts(Express *self, void *c) {
    return Py_BuildValue("{sKsKsKsKsKsK}", "express_sent", self->sent, "express_received", self->received,
                         "udp_gso_sends", self->gso_sends, "udp_gro_reads", self->gro_reads, "tun_super_reads",
                         self->super_reads, "tun_tunnel_reads", self->tunnel_reads);
}

static PyGetSetDef Express_getset[] = {
    {"counts", (getter)Express_get_counts, NULL, "what the express path carried, by udpio.py's names", NULL},
    {NULL}};

static PyTypeObject ExpressType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tunneld.net._express.Express",
    .tp_basicsize = sizeof(Express),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Express_init,
    .tp_dealloc = (destructor)Express_dealloc,
    .tp_methods = Express_methods,
    .tp_getset = Express_getset,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_express", "Lone packets through a node's data path.", -1};

PyMODINIT_FUNC PyInit__express(void) {
    if (PyType_Ready(&ExpressType) < 0) return NULL;
    s_tx_bytes = PyUnicode_InternFromString("tx_bytes");
    s_last_tx = PyUnicode_InternFromString("last_tx");
    s_rx_bytes = PyUnicode_InternFromString("rx_bytes");
    s_last_rx = PyUnicode_InternFromString("last_rx");
    s_last_drop = PyUnicode_InternFromString("last_drop");
    s_watch_until = PyUnicode_InternFromString("watch_until");
    s_version = PyUnicode_InternFromString("version");
    s_tx_packets = PyUnicode_InternFromString("tx_packets");
    s_rx_packets = PyUnicode_InternFromString("rx_packets");
    if (!s_tx_bytes || !s_last_tx || !s_rx_bytes || !s_last_rx || !s_last_drop || !s_watch_until || !s_version ||
        !s_tx_packets || !s_rx_packets)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Express", (PyObject *)&ExpressType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
