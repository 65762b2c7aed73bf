/* AES-GCM and ChaCha20-Poly1305 with the key set up once (proto/aead.py), and a
   session's DATA sealed and opened in one call (proto/session.py).

   `cryptography`'s AEAD objects prepare the cipher again on every call, about 1.4 us
   of a 1,400-byte packet's 2 to 2.5 us. Here each direction keeps one OpenSSL cipher
   context with its key schedule; a call only sets the nonce. Same calls, same bytes:

     Aead(key, chacha)               key: 16 or 32 bytes (AES-128/256-GCM), 32 (ChaCha)
     encrypt(nonce, data, aad)  ->   ciphertext + 16-byte tag
     decrypt(nonce, data, aad)  ->   plaintext; raises InvalidTag (cryptography's)

   Channel does for a session's DATA what session.py's Python does, in one call each way
   and one allocation: the counter, the header (wire.py), the nonce, the AEAD, and on
   opening the replay window of the counter's lane (replay.py's rules, kept as RFC 6479's
   ring of 64-bit words, one word more than the window so that the oldest counter the
   window spans never shares a word with the newest):

     Channel(send_key, recv_key, chacha, remote_index, counter, limit, drops)
     seal(plaintext, prefix, meta) -> prefix + DATA header + ciphertext + tag, or None
                                      when the counter reached limit
     open(msg)                     -> plaintext, or None with last_drop set to one of
                                      drops: (short, replay, too_old, auth)
     send_counter, send_limit      read and written as the Python session's are
     window_top(lane)              the highest counter accepted in a lane, -1 for none

   One process, one thread per object (the event loop's): the contexts are not shared.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#define TAG 16
#define NONCE 12
#define HEADER 16     /* type, 3 bytes of meta, the receiver's index, the counter */
#define DATA_TYPE 3   /* wire.DATA */
#define WINDOW 4096   /* replay.WINDOW */
#define WORDS (WINDOW / 64 + 1)
#define LANES 256

static PyObject *InvalidTag;

/* What both types share: a context per direction with its key set up once, and one AEAD
   call each way that only sets the nonce (1 on success, 0 on failure: for open, a bad tag). */
static int set_up(EVP_CIPHER_CTX **enc, EVP_CIPHER_CTX **dec, const EVP_CIPHER *cipher,
                  const void *send_key, const void *recv_key) {
    EVP_CIPHER_CTX_free(*enc);
    EVP_CIPHER_CTX_free(*dec);
    *enc = EVP_CIPHER_CTX_new();
    *dec = EVP_CIPHER_CTX_new();
    return *enc && *dec
        && EVP_EncryptInit_ex(*enc, cipher, NULL, send_key, NULL) == 1
        && EVP_DecryptInit_ex(*dec, cipher, NULL, recv_key, NULL) == 1;
}

/* in[0:n] -> out[0:n] + a 16-byte tag at out + n */
static int seal(EVP_CIPHER_CTX *ctx, const unsigned char *nonce, const void *aad, int aad_len,
                const void *in, int n, unsigned char *out) {
    int len;
    return EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) == 1
        && (aad_len == 0 || EVP_EncryptUpdate(ctx, NULL, &len, aad, aad_len) == 1)
        && EVP_EncryptUpdate(ctx, out, &len, in, n) == 1
        && EVP_EncryptFinal_ex(ctx, out + len, &len) == 1
        && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG, out + n) == 1;
}

/* in[0:n] and its tag at in + n -> out[0:n], if the tag holds */
static int open_(EVP_CIPHER_CTX *ctx, const unsigned char *nonce, const void *aad, int aad_len,
                 const unsigned char *in, int n, unsigned char *out) {
    int len;
    return EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce) == 1
        && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TAG, (void *)(in + n)) == 1
        && (aad_len == 0 || EVP_DecryptUpdate(ctx, NULL, &len, aad, aad_len) == 1)
        && EVP_DecryptUpdate(ctx, out, &len, in, n) == 1
        && EVP_DecryptFinal_ex(ctx, out + len, &len) == 1;
}

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *enc;
    EVP_CIPHER_CTX *dec;
} Aead;

static void Aead_dealloc(Aead *self) {
    EVP_CIPHER_CTX_free(self->enc);
    EVP_CIPHER_CTX_free(self->dec);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Aead_init(Aead *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"key", "chacha", NULL};
    Py_buffer key;
    int chacha = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*|p", names, &key, &chacha))
        return -1;
    const EVP_CIPHER *cipher = NULL;
    if (chacha && key.len == 32)
        cipher = EVP_chacha20_poly1305();
    else if (!chacha && key.len == 32)
        cipher = EVP_aes_256_gcm();
    else if (!chacha && key.len == 16)
        cipher = EVP_aes_128_gcm();
    if (cipher == NULL) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "key: 16 or 32 bytes for AES-GCM, 32 for ChaCha20-Poly1305");
        return -1;
    }
    int ok = set_up(&self->enc, &self->dec, cipher, key.buf, key.buf);
    PyBuffer_Release(&key);
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not set up the cipher");
        return -1;
    }
    return 0;
}

/* The three arguments of encrypt and decrypt, as buffers; the nonce checked. */
static int take(PyObject *const *args, Py_ssize_t n, Py_buffer *b) {
    if (n != 3) {
        PyErr_SetString(PyExc_TypeError, "takes (nonce, data, associated_data)");
        return -1;
    }
    for (int i = 0; i < 3; i++) {
        if (PyObject_GetBuffer(args[i], &b[i], PyBUF_SIMPLE) < 0) {
            while (i--)
                PyBuffer_Release(&b[i]);
            return -1;
        }
    }
    if (b[0].len != NONCE || b[1].len > INT_MAX - TAG || b[2].len > INT_MAX) {
        for (int i = 0; i < 3; i++)
            PyBuffer_Release(&b[i]);
        PyErr_SetString(PyExc_ValueError, "the nonce must be 12 bytes, and the data less than 2 GB");
        return -1;
    }
    return 0;
}

static void release(Py_buffer *b) {
    for (int i = 0; i < 3; i++)
        PyBuffer_Release(&b[i]);
}

static PyObject *Aead_encrypt(Aead *self, PyObject *const *args, Py_ssize_t n) {
    Py_buffer b[3];
    if (take(args, n, b) < 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, b[1].len + TAG);
    if (out == NULL) {
        release(b);
        return NULL;
    }
    int ok = seal(self->enc, b[0].buf, b[2].buf, (int)b[2].len, b[1].buf, (int)b[1].len,
                  (unsigned char *)PyBytes_AS_STRING(out));
    release(b);
    if (!ok) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed to encrypt");
        return NULL;
    }
    return out;
}

static PyObject *Aead_decrypt(Aead *self, PyObject *const *args, Py_ssize_t n) {
    Py_buffer b[3];
    if (take(args, n, b) < 0)
        return NULL;
    if (b[1].len < TAG) {
        release(b);
        PyErr_SetNone(InvalidTag);
        return NULL;
    }
    Py_ssize_t plain = b[1].len - TAG;
    PyObject *out = PyBytes_FromStringAndSize(NULL, plain);
    if (out == NULL) {
        release(b);
        return NULL;
    }
    int ok = open_(self->dec, b[0].buf, b[2].buf, (int)b[2].len, b[1].buf, (int)plain,
                   (unsigned char *)PyBytes_AS_STRING(out));
    release(b);
    if (!ok) {
        Py_DECREF(out);
        PyErr_SetNone(InvalidTag);
        return NULL;
    }
    return out;
}

static PyMethodDef Aead_methods[] = {
    {"encrypt", (PyCFunction)(void (*)(void))Aead_encrypt, METH_FASTCALL, "encrypt(nonce, data, aad) -> ciphertext + tag"},
    {"decrypt", (PyCFunction)(void (*)(void))Aead_decrypt, METH_FASTCALL, "decrypt(nonce, data, aad) -> plaintext, or InvalidTag"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject AeadType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tunneld.proto._aead.Aead",
    .tp_basicsize = sizeof(Aead),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An AEAD key, set up once for both directions.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Aead_init,
    .tp_dealloc = (destructor)Aead_dealloc,
    .tp_methods = Aead_methods,
};


/* -- Channel ------------------------------------------------------------------------- */

typedef struct {
    int seen;      /* 0: nothing accepted yet */
    uint64_t top;  /* the highest counter accepted */
    uint64_t bits[WORDS];
} Window;

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *enc;
    EVP_CIPHER_CTX *dec;
    unsigned char remote[4];
    int big_endian_nonce;  /* Noise's AES-GCM nonce; ChaChaPoly's is little-endian */
    uint64_t counter, limit;
    PyObject *drops;      /* (short, replay, too_old, auth) */
    PyObject *last_drop;
    Window *windows[LANES];
} Channel;

static void Channel_dealloc(Channel *self) {
    EVP_CIPHER_CTX_free(self->enc);
    EVP_CIPHER_CTX_free(self->dec);
    for (int i = 0; i < LANES; i++)
        PyMem_Free(self->windows[i]);
    Py_XDECREF(self->drops);
    Py_XDECREF(self->last_drop);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Channel_init(Channel *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"send_key", "recv_key", "chacha", "remote_index", "counter", "limit", "drops", NULL};
    Py_buffer sk, rk, ri;
    int chacha;
    unsigned long long counter, limit;
    PyObject *drops;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*y*py*KKO!", names, &sk, &rk, &chacha, &ri, &counter, &limit,
                                     &PyTuple_Type, &drops))
        return -1;
    int ok = sk.len == 32 && rk.len == 32 && ri.len == 4 && PyTuple_GET_SIZE(drops) == 4;
    if (ok) {
        const EVP_CIPHER *cipher = chacha ? EVP_chacha20_poly1305() : EVP_aes_256_gcm();
        memcpy(self->remote, ri.buf, 4);
        ok = set_up(&self->enc, &self->dec, cipher, sk.buf, rk.buf);
    } else {
        PyErr_SetString(PyExc_ValueError, "keys of 32 bytes, an index of 4 and four drop names");
    }
    PyBuffer_Release(&sk);
    PyBuffer_Release(&rk);
    PyBuffer_Release(&ri);
    if (!ok) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not set up the cipher");
        return -1;
    }
    self->big_endian_nonce = !chacha;
    self->counter = counter;
    self->limit = limit;
    Py_INCREF(drops);
    Py_XSETREF(self->drops, drops);
    PyObject *auth = PyTuple_GET_ITEM(drops, 3);
    Py_INCREF(auth);
    Py_XSETREF(self->last_drop, auth);
    return 0;
}

static void nonce_of(const Channel *self, uint64_t n, unsigned char *nonce) {
    memset(nonce, 0, 4);
    for (int i = 0; i < 8; i++)
        nonce[4 + i] = self->big_endian_nonce ? (unsigned char)(n >> (56 - 8 * i)) : (unsigned char)(n >> (8 * i));
}

static PyObject *Channel_seal(Channel *self, PyObject *const *args, Py_ssize_t n) {
    if (n < 1 || n > 3) {
        PyErr_SetString(PyExc_TypeError, "seal(plaintext, prefix=b'', meta=b'')");
        return NULL;
    }
    if (self->counter >= self->limit)
        Py_RETURN_NONE;
    Py_buffer b[3] = {{0}, {0}, {0}};
    int got = 0;
    for (; got < n; got++)
        if (PyObject_GetBuffer(args[got], &b[got], PyBUF_SIMPLE) < 0)
            goto fail;
    Py_ssize_t plain = b[0].len, pre = n > 1 ? b[1].len : 0, meta = n > 2 ? b[2].len : 0;
    if (plain > INT_MAX - TAG || (meta != 0 && meta != 3)) {
        PyErr_SetString(PyExc_ValueError, "a plaintext under 2 GB, and meta of 3 bytes or none");
        goto fail;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, pre + HEADER + plain + TAG);
    if (out == NULL)
        goto fail;
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out), *h = o + pre, nonce[NONCE];
    uint64_t c = self->counter++;
    if (pre)
        memcpy(o, b[1].buf, pre);
    h[0] = DATA_TYPE;
    if (meta)
        memcpy(h + 1, b[2].buf, 3);
    else
        h[1] = h[2] = h[3] = 0;
    memcpy(h + 4, self->remote, 4);
    for (int i = 0; i < 8; i++)
        h[8 + i] = (unsigned char)(c >> (56 - 8 * i));
    nonce_of(self, c, nonce);
    int ok = seal(self->enc, nonce, h, HEADER, b[0].buf, (int)plain, h + HEADER);
    for (int i = 0; i < got; i++)
        PyBuffer_Release(&b[i]);
    if (!ok) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed to encrypt");
        return NULL;
    }
    return out;
fail:
    for (int i = 0; i < got; i++)
        PyBuffer_Release(&b[i]);
    return NULL;
}

static PyObject *dropped(Channel *self, int why) {
    PyObject *name = PyTuple_GET_ITEM(self->drops, why);
    Py_INCREF(name);
    Py_SETREF(self->last_drop, name);
    Py_RETURN_NONE;
}

static PyObject *open_msg(Channel *self, const unsigned char *m, Py_ssize_t size);

static PyObject *Channel_open(Channel *self, PyObject *msg) {
    if (PyBytes_Check(msg))
        return open_msg(self, (const unsigned char *)PyBytes_AS_STRING(msg), PyBytes_GET_SIZE(msg));
    Py_buffer b;
    if (PyObject_GetBuffer(msg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = open_msg(self, b.buf, b.len);
    PyBuffer_Release(&b);
    return out;
}

static PyObject *open_msg(Channel *self, const unsigned char *m, Py_ssize_t size) {
    if (size < HEADER + TAG || size - HEADER - TAG > INT_MAX)
        return dropped(self, 0);
    uint64_t c = 0;
    for (int i = 0; i < 8; i++)
        c = c << 8 | m[8 + i];
    int lane = m[8];
    Window *w = self->windows[lane];
    if (w == NULL) {
        w = self->windows[lane] = PyMem_Calloc(1, sizeof(Window));
        if (w == NULL)
            return PyErr_NoMemory();
    }
    /* fresh? (replay.py): above everything seen, or within the window and not seen yet */
    if (w->seen && c <= w->top) {
        uint64_t d = w->top - c;
        if (d >= WINDOW)
            return dropped(self, 2);
        if (w->bits[(c >> 6) % WORDS] >> (c & 63) & 1)
            return dropped(self, 1);
    }
    Py_ssize_t plain = size - HEADER - TAG;
    PyObject *out = PyBytes_FromStringAndSize(NULL, plain);
    if (out == NULL)
        return NULL;
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out), nonce[NONCE];
    nonce_of(self, c, nonce);
    if (!open_(self->dec, nonce, m, HEADER, m + HEADER, (int)plain, o)) {
        Py_DECREF(out);
        return dropped(self, 3);
    }
    /* mark, only now that it authenticated: a forged counter must not move the window */
    if (!w->seen || c > w->top) {
        uint64_t from = (w->top >> 6) + 1, to = c >> 6;  /* the words it moves into */
        if (!w->seen || (to >= from && to - from >= WORDS))
            memset(w->bits, 0, sizeof w->bits);
        else
            for (uint64_t i = from; i <= to; i++)
                w->bits[i % WORDS] = 0;
        w->top = c;
        w->seen = 1;
    }
    w->bits[(c >> 6) % WORDS] |= (uint64_t)1 << (c & 63);
    return out;
}

static PyObject *Channel_window_top(Channel *self, PyObject *arg) {
    long lane = PyLong_AsLong(arg);
    if (lane == -1 && PyErr_Occurred())
        return NULL;
    if (lane < 0 || lane >= LANES) {
        PyErr_SetString(PyExc_ValueError, "a lane is 0 to 255");
        return NULL;
    }
    Window *w = self->windows[lane];
    return w && w->seen ? PyLong_FromUnsignedLongLong(w->top) : PyLong_FromLong(-1);
}

static PyObject *Channel_get_counter(Channel *self, void *which) {
    return PyLong_FromUnsignedLongLong(which ? self->limit : self->counter);
}

static int Channel_set_counter(Channel *self, PyObject *value, void *which) {
    unsigned long long v = value ? PyLong_AsUnsignedLongLong(value) : (unsigned long long)-1;
    if (v == (unsigned long long)-1 && (value == NULL || PyErr_Occurred())) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "cannot delete a counter");
        return -1;
    }
    if (which)
        self->limit = v;
    else
        self->counter = v;
    return 0;
}

static PyObject *Channel_get_last_drop(Channel *self, void *closure) {
    (void)closure;
    Py_INCREF(self->last_drop);
    return self->last_drop;
}

static PyMethodDef Channel_methods[] = {
    {"seal", (PyCFunction)(void (*)(void))Channel_seal, METH_FASTCALL, "seal(plaintext, prefix, meta) -> DATA, or None"},
    {"open", (PyCFunction)Channel_open, METH_O, "open(msg) -> plaintext, or None (last_drop says why)"},
    {"window_top", (PyCFunction)Channel_window_top, METH_O, "the highest counter accepted in a lane, or -1"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Channel_getset[] = {
    {"send_counter", (getter)Channel_get_counter, (setter)Channel_set_counter, "the next counter sealed", NULL},
    {"send_limit", (getter)Channel_get_counter, (setter)Channel_set_counter, "no counter this high is sealed", (void *)1},
    {"last_drop", (getter)Channel_get_last_drop, NULL, "why the last open() gave None", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ChannelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tunneld.proto._aead.Channel",
    .tp_basicsize = sizeof(Channel),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A session's DATA, sealed and opened.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Channel_init,
    .tp_dealloc = (destructor)Channel_dealloc,
    .tp_methods = Channel_methods,
    .tp_getset = Channel_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_aead", "AEAD with the key set up once (proto/aead.py).", -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__aead(void) {
    PyObject *exceptions = PyImport_ImportModule("cryptography.exceptions");
    if (exceptions == NULL)
        return NULL;
    InvalidTag = PyObject_GetAttrString(exceptions, "InvalidTag");
    Py_DECREF(exceptions);
    if (InvalidTag == NULL || PyType_Ready(&AeadType) < 0 || PyType_Ready(&ChannelType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Aead", (PyObject *)&AeadType) < 0
        || PyModule_AddObjectRef(m, "Channel", (PyObject *)&ChannelType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
