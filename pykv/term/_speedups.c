/* pykv.term._speedups: the common paths of codec.py, in C.
 *
 * It covers the terms that make up nearly all distribution traffic (atoms, small and 32-bit
 * integers, floats, binaries, tuples, lists, maps, pids, references, [a | tail] call tags)
 * and hands everything else, including every malformed or unusual input, to the pure-Python
 * codec, subterm by subterm. Errors are therefore always raised by the Python code, with its
 * messages, and the Python codec stays the reference: the same tests run against both.
 *
 * codec.py calls setup() once with the Python objects shared by both implementations (the
 * types, the caches, the fallback decoders and encoder), then setup_walkers().
 *
 * decode() and encode() recurse on the C stack, to max_depth (codec.FAST_DEPTH) nested
 * containers; a deeper one goes to the Python codec, which gives up on it (_TooDeep), and
 * codec.py starts the term again with decode_deep() / encode_deep(): loops with a stack of
 * their own for tuples, lists and maps, the Python walkers for anything else that nests.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>

/* ETF tags (External Term Format chapter of the ERTS docs) */
enum {
    RECORD_EXT = 67, NEW_FLOAT_EXT = 70, NEW_PID_EXT = 88, NEWER_REFERENCE_EXT = 90,
    SMALL_INTEGER_EXT = 97, INTEGER_EXT = 98, ATOM_EXT = 100,
    SMALL_TUPLE_EXT = 104, LARGE_TUPLE_EXT = 105, NIL_EXT = 106, STRING_EXT = 107,
    LIST_EXT = 108, BINARY_EXT = 109, NEW_FUN_EXT = 112, SMALL_ATOM_EXT = 115, MAP_EXT = 116,
    ATOM_UTF8_EXT = 118, SMALL_ATOM_UTF8_EXT = 119,
};
#define MAX_REFERENCE_WORDS 5

/* set by setup() */
static int max_depth;
static PyObject *py_decoders;      /* list of 256 callables (data, pos, depth) -> (term, pos) */
static PyObject *py_encode_item;   /* callable (buf, term, depth) -> None */
static PyObject *py_freeze;        /* callable (term) -> hashable term */
static PyObject *atom_terms;       /* dict: atom encoding -> term (Atom, True, False, None) */
static PyObject *atoms;            /* dict: atom encoding -> Atom (node names, always atoms) */
static PyObject *pids;             /* dict: pid encoding (after the tag) -> Pid */
static PyObject *atom_encodings;   /* dict: atom name -> its encoding */
static PyTypeObject *atom_type, *pid_type, *ref_type, *improper_type;
static Py_ssize_t atom_name_off;                 /* Atom.name */
static Py_ssize_t pid_off[4];                    /* Pid: node, id, serial, creation */
static Py_ssize_t ref_off[3];                    /* Reference: node, creation, ids */
static Py_ssize_t improper_off[2];               /* ImproperList: items, tail */
static PyObject *enc_nil, *enc_true, *enc_false; /* encodings of nil, true, false */
/* set by setup_walkers() */
static PyObject *py_walk_decode;   /* callable (data, pos) -> (term, next, height) */
static PyObject *py_build_map;     /* callable (items, hash_keys) -> dict or Map */
static PyObject *py_walk_encode;   /* callable (buf, term) -> None */
static PyObject *term_error;       /* codec.TermError */

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* ----------------------------------------------------------------------------- decode */

typedef struct {
    PyObject *data;             /* what the Python decoders are given */
    const unsigned char *buf;
    Py_ssize_t len;
} Source;

static inline uint16_t be16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Whether `count` elements of at least `size` bytes each fit in `room` bytes (counts are
 * 32-bit on the wire: compared unsigned, so that no build sees one as negative). */
static inline int fits(uint32_t count, unsigned size, Py_ssize_t room) {
    return room >= 0 && (uint64_t)count * size <= (uint64_t)room;
}

/* The Python decoder for the term whose tag is at `pos`: the path for everything rare or
 * wrong. Returns a new reference and sets *next, or NULL with the Python error set. */
static PyObject *fallback(Source *s, Py_ssize_t pos, int depth, Py_ssize_t *next) {
    if (pos >= s->len) {
        PyErr_SetString(PyExc_IndexError, "term runs past the end of the data");
        return NULL;
    }
    PyObject *decoder = PyList_GET_ITEM(py_decoders, s->buf[pos]);
    PyObject *result = PyObject_CallFunction(decoder, "Oni", s->data, pos + 1, depth);
    if (result == NULL)
        return NULL;
    if (!PyTuple_Check(result) || PyTuple_GET_SIZE(result) != 2) {
        Py_DECREF(result);
        PyErr_SetString(PyExc_SystemError, "a Python decoder returned no (term, pos) pair");
        return NULL;
    }
    PyObject *term = PyTuple_GET_ITEM(result, 0);
    *next = PyLong_AsSsize_t(PyTuple_GET_ITEM(result, 1));
    Py_INCREF(term);
    Py_DECREF(result);
    if (*next == -1 && PyErr_Occurred()) {
        Py_DECREF(term);
        return NULL;
    }
    return term;
}

/* An instance of a slots class, its slots filled in order (values are stolen), as the
 * Python codec's _object_builder does: no __init__ runs. */
static PyObject *build(PyTypeObject *type, const Py_ssize_t *offsets, int n, PyObject **values) {
    PyObject *obj = type->tp_alloc(type, 0);
    if (obj == NULL) {
        for (int i = 0; i < n; i++)
            Py_DECREF(values[i]);
        return NULL;
    }
    for (int i = 0; i < n; i++)
        SLOT(obj, offsets[i]) = values[i];
    return obj;
}

static PyObject *decode_term(Source *s, Py_ssize_t pos, int depth, Py_ssize_t *next);

/* Element counts come from the wire: room for more than this many is made as elements
 * really arrive, so that nested containers each claiming every remaining byte cannot make
 * the decoder reserve far more memory than the input justifies. */
#define PREALLOC_LIMIT 1024

/* A list of the `count` terms starting at *at (each decoded at `depth`); *at moves past. */
static PyObject *decode_items(Source *s, Py_ssize_t *at, Py_ssize_t count, int depth) {
    Py_ssize_t reserved = count < PREALLOC_LIMIT ? count : PREALLOC_LIMIT;
    PyObject *list = PyList_New(reserved);
    if (list == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = decode_term(s, *at, depth, at);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        if (i < reserved) {
            PyList_SET_ITEM(list, i, item);
        } else {
            int failed = PyList_Append(list, item);
            Py_DECREF(item);
            if (failed) {
                Py_DECREF(list);
                return NULL;
            }
        }
    }
    return list;
}

/* An atom as a term (true/false/nil as Python values), from the shared cache; a miss goes
 * to the Python decoder, which fills the cache. */
static PyObject *decode_atom_term(Source *s, Py_ssize_t pos, Py_ssize_t end, int depth, Py_ssize_t *next) {
    if (end > s->len)
        return fallback(s, pos, depth, next);
    PyObject *key = PyBytes_FromStringAndSize((const char *)s->buf + pos, end - pos);
    if (key == NULL)
        return NULL;
    PyObject *term = PyDict_GetItemWithError(atom_terms, key);
    Py_DECREF(key);
    if (term == NULL) {
        if (PyErr_Occurred())
            return NULL;
        return fallback(s, pos, depth, next);
    }
    Py_INCREF(term);
    *next = end;
    return term;
}

/* A node-name atom (always an Atom) at `pos`, for a pid or reference; NULL without an error
 * set means "not the simple case": the caller falls back. */
static PyObject *node_atom(Source *s, Py_ssize_t pos, Py_ssize_t *next) {
    if (pos + 2 > s->len)
        return NULL;
    unsigned char tag = s->buf[pos];
    Py_ssize_t end = pos + 2 + s->buf[pos + 1];
    if ((tag != SMALL_ATOM_UTF8_EXT && tag != SMALL_ATOM_EXT) || end > s->len)
        return NULL;
    PyObject *key = PyBytes_FromStringAndSize((const char *)s->buf + pos, end - pos);
    if (key == NULL)
        return NULL;
    PyObject *atom = PyDict_GetItemWithError(atoms, key);
    Py_DECREF(key);
    if (atom == NULL)  /* not cached yet: the Python decoder caches it */
        return NULL;
    Py_INCREF(atom);
    *next = end;
    return atom;
}

static PyObject *decode_pid(Source *s, Py_ssize_t pos, int depth, Py_ssize_t *next) {
    /* NEW_PID_EXT: Node, ID:32, Serial:32, Creation:32; the shared cache is keyed by the
     * bytes after the tag */
    if (pos + 2 < s->len) {
        Py_ssize_t end = pos + 15 + s->buf[pos + 2];
        if (end <= s->len) {
            PyObject *key = PyBytes_FromStringAndSize((const char *)s->buf + pos + 1, end - pos - 1);
            if (key == NULL)
                return NULL;
            PyObject *pid = PyDict_GetItemWithError(pids, key);
            Py_DECREF(key);
            if (pid != NULL) {
                Py_INCREF(pid);
                *next = end;
                return pid;
            }
            if (PyErr_Occurred())
                return NULL;
        }
    }
    return fallback(s, pos, depth, next);  /* builds the pid and caches it */
}

static PyObject *decode_reference(Source *s, Py_ssize_t pos, int depth, Py_ssize_t *next) {
    /* NEWER_REFERENCE_EXT: Len:16, Node, Creation:32, ID: Len x 32 */
    if (pos + 3 > s->len)
        return fallback(s, pos, depth, next);
    unsigned words = be16(s->buf + pos + 1);
    Py_ssize_t at;
    if (words < 1 || words > MAX_REFERENCE_WORDS)
        return fallback(s, pos, depth, next);
    PyObject *node = node_atom(s, pos + 3, &at);
    if (node == NULL) {
        if (PyErr_Occurred())
            return NULL;
        return fallback(s, pos, depth, next);
    }
    if (at + 4 + 4 * (Py_ssize_t)words > s->len) {
        Py_DECREF(node);
        return fallback(s, pos, depth, next);
    }
    PyObject *values[3] = {node, PyLong_FromUnsignedLong(be32(s->buf + at)), PyTuple_New(words)};
    if (values[1] == NULL || values[2] == NULL) {
        Py_DECREF(node);
        Py_XDECREF(values[1]);
        Py_XDECREF(values[2]);
        return NULL;
    }
    at += 4;
    for (unsigned i = 0; i < words; i++, at += 4) {
        PyObject *word = PyLong_FromUnsignedLong(be32(s->buf + at));
        if (word == NULL) {
            for (int j = 0; j < 3; j++)
                Py_DECREF(values[j]);
            return NULL;
        }
        PyTuple_SET_ITEM(values[2], i, word);
    }
    *next = at;
    return build(ref_type, ref_off, 3, values);
}

static PyObject *decode_list(Source *s, Py_ssize_t pos, int depth, Py_ssize_t *next) {
    /* LIST_EXT: Length:32, Elements, Tail. As the Python decoder: a LIST_EXT tail continues
     * the list, a STRING_EXT tail extends it, an empty list with another tail is that tail,
     * anything else makes [a, ... | tail]. */
    if (depth >= max_depth || pos + 5 > s->len || !fits(be32(s->buf + pos + 1), 1, s->len - pos - 5))
        return fallback(s, pos, depth, next);  /* the Python decoder says what is wrong */
    Py_ssize_t at = pos + 5;
    PyObject *list = decode_items(s, &at, be32(s->buf + pos + 1), depth + 1);
    if (list == NULL)
        return NULL;
    for (;;) {
        if (at >= s->len) {
            Py_DECREF(list);
            return fallback(s, pos, depth, next);
        }
        unsigned char tag = s->buf[at];
        if (tag == NIL_EXT) {
            *next = at + 1;
            return list;
        }
        if (tag != LIST_EXT)
            break;
        if (at + 5 > s->len || !fits(be32(s->buf + at + 1), 1, s->len - at - 5)) {
            Py_DECREF(list);
            return fallback(s, pos, depth, next);
        }
        Py_ssize_t count = be32(s->buf + at + 1);
        at += 5;
        PyObject *more = decode_items(s, &at, count, depth + 1);
        int failed = more == NULL || PyList_SetSlice(list, PY_SSIZE_T_MAX, PY_SSIZE_T_MAX, more) < 0;
        Py_XDECREF(more);
        if (failed) {
            Py_DECREF(list);
            return NULL;
        }
    }
    PyObject *tail = decode_term(s, at, depth + 1, &at);
    if (tail == NULL) {
        Py_DECREF(list);
        return NULL;
    }
    *next = at;
    if (PyList_CheckExact(tail)) {  /* a STRING_EXT tail */
        int failed = PyList_SetSlice(list, PY_SSIZE_T_MAX, PY_SSIZE_T_MAX, tail);
        Py_DECREF(tail);
        if (failed) {
            Py_DECREF(list);
            return NULL;
        }
        return list;
    }
    if (PyList_GET_SIZE(list) == 0) {
        Py_DECREF(list);
        return tail;
    }
    PyObject *values[2] = {PyList_AsTuple(list), tail};
    Py_DECREF(list);
    if (values[0] == NULL) {
        Py_DECREF(tail);
        return NULL;
    }
    return build(improper_type, improper_off, 2, values);
}

static PyObject *decode_map(Source *s, Py_ssize_t pos, int depth, Py_ssize_t *next) {
    /* MAP_EXT: Arity:32, then key/value pairs */
    if (pos + 5 > s->len || depth >= max_depth || !fits(be32(s->buf + pos + 1), 2, s->len - pos - 5))
        return fallback(s, pos, depth, next);
    Py_ssize_t count = be32(s->buf + pos + 1);
    PyObject *map = PyDict_New();
    if (map == NULL)
        return NULL;
    Py_ssize_t at = pos + 5;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *key = decode_term(s, at, depth + 1, &at);
        if (key == NULL)
            goto error;
        PyObject *value = decode_term(s, at, depth + 1, &at);
        if (value == NULL) {
            Py_DECREF(key);
            goto error;
        }
        int failed = PyDict_SetItem(map, key, value);
        if (failed && PyErr_ExceptionMatches(PyExc_TypeError)) {  /* a list or map key */
            PyErr_Clear();
            PyObject *frozen = PyObject_CallOneArg(py_freeze, key);
            failed = frozen == NULL ? -1 : PyDict_SetItem(map, frozen, value);
            Py_XDECREF(frozen);
        }
        Py_DECREF(key);
        Py_DECREF(value);
        if (failed)
            goto error;
    }
    if (PyDict_GET_SIZE(map) != count) {  /* colliding keys: the Python decoder says why */
        Py_DECREF(map);
        return fallback(s, pos, depth, next);
    }
    *next = at;
    return map;
error:
    Py_DECREF(map);
    return NULL;
}

/* The term whose tag is at `pos`: a new reference, *next set past it. */
static PyObject *decode_term(Source *s, Py_ssize_t pos, int depth, Py_ssize_t *next) {
    if (pos >= s->len)
        return fallback(s, pos, depth, next);
    const unsigned char *p = s->buf + pos;
    Py_ssize_t left = s->len - pos;
    switch (p[0]) {
    case SMALL_INTEGER_EXT:
        if (left < 2)
            break;
        *next = pos + 2;
        return PyLong_FromLong(p[1]);
    case INTEGER_EXT:
        if (left < 5)
            break;
        *next = pos + 5;
        return PyLong_FromLong((int32_t)be32(p + 1));
    case SMALL_ATOM_UTF8_EXT:
    case SMALL_ATOM_EXT:
        if (left < 2)
            break;
        return decode_atom_term(s, pos, pos + 2 + p[1], depth, next);
    case ATOM_UTF8_EXT:
    case ATOM_EXT:
        if (left < 3)
            break;
        return decode_atom_term(s, pos, pos + 3 + be16(p + 1), depth, next);
    case BINARY_EXT: {
        if (left < 5)
            break;
        if (!fits(be32(p + 1), 1, left - 5))
            break;
        Py_ssize_t size = be32(p + 1);
        *next = pos + 5 + size;
        return PyBytes_FromStringAndSize((const char *)p + 5, size);
    }
    case SMALL_TUPLE_EXT:
    case LARGE_TUPLE_EXT: {
        Py_ssize_t count, at;
        if (p[0] == SMALL_TUPLE_EXT) {
            if (left < 2)
                break;
            count = p[1];
            at = pos + 2;
        } else {
            if (left < 5)
                break;
            if (!fits(be32(p + 1), 1, left - 5))
                break;
            count = be32(p + 1);
            at = pos + 5;
        }
        if (depth >= max_depth)
            break;
        if (count > PREALLOC_LIMIT) {
            PyObject *items = decode_items(s, &at, count, depth + 1);
            if (items == NULL)
                return NULL;
            PyObject *tuple = PyList_AsTuple(items);
            Py_DECREF(items);
            *next = at;
            return tuple;
        }
        PyObject *tuple = PyTuple_New(count);
        if (tuple == NULL)
            return NULL;
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *item = decode_term(s, at, depth + 1, &at);
            if (item == NULL) {
                Py_DECREF(tuple);
                return NULL;
            }
            PyTuple_SET_ITEM(tuple, i, item);
        }
        *next = at;
        return tuple;
    }
    case NIL_EXT:
        *next = pos + 1;
        return PyList_New(0);
    case STRING_EXT: {
        if (left < 3)
            break;
        Py_ssize_t count = be16(p + 1);
        if (count > left - 3)
            break;
        PyObject *list = PyList_New(count);
        if (list == NULL)
            return NULL;
        for (Py_ssize_t i = 0; i < count; i++)
            PyList_SET_ITEM(list, i, PyLong_FromLong(p[3 + i]));  /* small ints: cached */
        *next = pos + 3 + count;
        return list;
    }
    case LIST_EXT:
        return decode_list(s, pos, depth, next);
    case MAP_EXT:
        return decode_map(s, pos, depth, next);
    case NEW_PID_EXT:
        return decode_pid(s, pos, depth, next);
    case NEWER_REFERENCE_EXT:
        return decode_reference(s, pos, depth, next);
    case NEW_FLOAT_EXT: {
        if (left < 9)
            break;
        double value = PyFloat_Unpack8((const char *)p + 1, 0);
        if (value == -1.0 && PyErr_Occurred())
            return NULL;
        if (value - value != 0.0)  /* inf or NaN: the Python decoder refuses it */
            break;
        *next = pos + 9;
        return PyFloat_FromDouble(value);
    }
    }
    return fallback(s, pos, depth, next);
}

/* Whether setup() has run; if not, a RuntimeError is set. */
static int ready(void) {
    if (py_decoders == NULL)
        PyErr_SetString(PyExc_RuntimeError, "pykv.term._speedups: setup() has not run");
    return py_decoders != NULL;
}

/* decode(data, pos, depth) -> (term, next): the term whose tag is at `pos`. */
static PyObject *py_decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (!ready())
        return NULL;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "decode(data, pos, depth)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    long depth = PyLong_AsLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    if (pos < 0 || depth < 0 || depth > max_depth) {
        PyErr_SetString(PyExc_ValueError, "decode: pos must be >= 0 and depth within 0..MAX_DEPTH");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Source s = {args[0], view.buf, view.len};
    Py_ssize_t next = 0;
    PyObject *term = decode_term(&s, pos, (int)depth, &next);
    PyBuffer_Release(&view);
    if (term == NULL)
        return NULL;
    PyObject *result = Py_BuildValue("(Nn)", term, next);
    return result;
}

/* ----------------------------------------------------------------------------- deep decode */

/* What a frame of decode_deep() is building (codec.py's _walk_decode, for these three). */
enum { D_TUPLE, D_LIST, D_LIST_TAIL, D_MAP };

typedef struct {
    int kind;
    int deep_key;         /* D_MAP: a key too deep to hash */
    Py_ssize_t due;       /* children still to come */
    Py_ssize_t height;    /* the tallest child so far */
    PyObject *children;   /* list */
} DecodeFrame;

/* Whether terms with this tag hold other terms: never handed to decode_term() here. */
static inline int nests(unsigned char tag) {
    return tag == SMALL_TUPLE_EXT || tag == LARGE_TUPLE_EXT || tag == LIST_EXT || tag == MAP_EXT
           || tag == NEW_FUN_EXT || tag == RECORD_EXT;
}

/* The Python walker for the term at `pos` (funs, anything malformed): (term, next, height). */
static PyObject *walk_in_python(Source *s, Py_ssize_t pos, Py_ssize_t *next, Py_ssize_t *height) {
    PyObject *result = PyObject_CallFunction(py_walk_decode, "On", s->data, pos);
    if (result == NULL)
        return NULL;
    if (!PyTuple_Check(result) || PyTuple_GET_SIZE(result) != 3) {
        Py_DECREF(result);
        PyErr_SetString(PyExc_SystemError, "_walk_decode returned no (term, pos, height)");
        return NULL;
    }
    PyObject *term = PyTuple_GET_ITEM(result, 0);
    *next = PyLong_AsSsize_t(PyTuple_GET_ITEM(result, 1));
    *height = PyLong_AsSsize_t(PyTuple_GET_ITEM(result, 2));
    Py_INCREF(term);
    Py_DECREF(result);
    if (PyErr_Occurred()) {
        Py_DECREF(term);
        return NULL;
    }
    return term;
}

/* A LIST_EXT tail once a list's elements are in: the list (and *next) when it is NIL; 0 and
 * the frame ready for more when it is another LIST_EXT (*done 0); NULL and *done 0 for any
 * other tail, the frame now waiting for it. *done is -1 on error. */
static int list_tail(Source *s, DecodeFrame *frame, Py_ssize_t *at) {
    for (;;) {
        if (*at >= s->len)
            return -2;
        unsigned char tag = s->buf[*at];
        if (tag == NIL_EXT) {
            *at += 1;
            return 1;                       /* complete */
        }
        if (tag != LIST_EXT) {
            frame->kind = D_LIST_TAIL;
            frame->due = 1;
            return 0;                       /* one more term: the tail */
        }
        if (*at + 5 > s->len || !fits(be32(s->buf + *at + 1), 1, s->len - *at - 5))
            return -2;                      /* let Python say what is wrong */
        frame->due = be32(s->buf + *at + 1);
        *at += 5;
        if (frame->due)
            return 0;
    }
}

/* The finished container of `frame` (a new reference), its children released. */
static PyObject *finish(DecodeFrame *frame) {
    PyObject *children = frame->children, *value = NULL;
    frame->children = NULL;
    switch (frame->kind) {
    case D_TUPLE:
        value = PyList_AsTuple(children);
        break;
    case D_LIST:
        Py_INCREF(children);
        value = children;
        break;
    case D_LIST_TAIL: {
        Py_ssize_t n = PyList_GET_SIZE(children);
        PyObject *tail = PyList_GET_ITEM(children, n - 1);
        Py_INCREF(tail);
        if (PyList_SetSlice(children, n - 1, n, NULL) < 0) {
            Py_DECREF(tail);
            break;
        }
        if (PyList_CheckExact(tail)) {  /* a STRING_EXT tail extends the list */
            if (PyList_SetSlice(children, PY_SSIZE_T_MAX, PY_SSIZE_T_MAX, tail) == 0) {
                Py_INCREF(children);
                value = children;
            }
            Py_DECREF(tail);
        } else if (n == 1) {            /* LIST_EXT of no elements is its tail */
            value = tail;
        } else {
            PyObject *values[2] = {PyList_AsTuple(children), tail};
            if (values[0] == NULL)
                Py_DECREF(tail);
            else
                value = build(improper_type, improper_off, 2, values);
        }
        break;
    }
    case D_MAP:
        value = PyObject_CallFunction(py_build_map, "OO", children, frame->deep_key ? Py_False : Py_True);
        break;
    }
    Py_DECREF(children);
    return value;
}

/* The term whose tag is at `pos`, however deep, without recursion: *next past it. */
static PyObject *decode_deep(Source *s, Py_ssize_t pos, Py_ssize_t *next) {
    DecodeFrame *stack = NULL, *frame;
    Py_ssize_t depth = 0, room = 0, height = 0;
    PyObject *value = NULL;
    for (;;) {
        /* -- open a container, or decode a leaf into (value, height) */
        int kind = -1;
        Py_ssize_t count = 0, at = pos;
        if (pos < s->len) {
            unsigned char tag = s->buf[pos];
            Py_ssize_t left = s->len - pos;
            if (tag == SMALL_TUPLE_EXT && left >= 2) {
                kind = D_TUPLE, count = s->buf[pos + 1], at = pos + 2;
            } else if (tag == LARGE_TUPLE_EXT && left >= 5 && fits(be32(s->buf + pos + 1), 1, left - 5)) {
                kind = D_TUPLE, count = be32(s->buf + pos + 1), at = pos + 5;
            } else if (tag == LIST_EXT && left >= 5 && fits(be32(s->buf + pos + 1), 1, left - 5)) {
                kind = D_LIST, count = be32(s->buf + pos + 1), at = pos + 5;
            } else if (tag == MAP_EXT && left >= 5 && fits(be32(s->buf + pos + 1), 2, left - 5)) {
                kind = D_MAP, count = 2 * (Py_ssize_t)be32(s->buf + pos + 1), at = pos + 5;
            }
        }
        if (kind >= 0 && (count || kind == D_LIST)) {
            if (depth == room) {
                Py_ssize_t bigger = room ? 2 * room : 64;
                DecodeFrame *grown = PyMem_Realloc(stack, bigger * sizeof *stack);
                if (grown == NULL) {
                    PyErr_NoMemory();
                    goto error;
                }
                stack = grown, room = bigger;
            }
            frame = &stack[depth];
            frame->children = PyList_New(0);
            if (frame->children == NULL)
                goto error;
            frame->kind = kind, frame->due = count, frame->height = 0, frame->deep_key = 0;
            depth++;
            pos = at;
            if (count)
                continue;
            int done = list_tail(s, frame, &pos);  /* LIST_EXT of no elements */
            if (done == -2) {
                pos = at - 5;  /* the Python walker reports it */
                Py_CLEAR(frame->children);
                depth--;
                goto leaf;
            }
            if (done == 0)
                continue;
            value = finish(frame);
            depth--;
            if (value == NULL)
                goto error;
            height = 1;
        } else if (kind >= 0) {  /* {} or %{} */
            value = kind == D_TUPLE ? PyTuple_New(0) : PyDict_New();
            if (value == NULL)
                goto error;
            pos = at, height = 1;
        } else {
        leaf:
            if (pos < s->len && !nests(s->buf[pos])) {
                value = decode_term(s, pos, 0, &pos);  /* leaves do not nest */
                height = 0;
            } else {
                value = walk_in_python(s, pos, &pos, &height);
            }
            if (value == NULL)
                goto error;
        }
        /* -- hand the value to the frames it completes, innermost first */
        while (depth) {
            frame = &stack[depth - 1];
            if (frame->kind == D_MAP && !(PyList_GET_SIZE(frame->children) & 1) && height >= max_depth)
                frame->deep_key = 1;
            int failed = PyList_Append(frame->children, value);
            Py_CLEAR(value);
            if (failed)
                goto error;
            if (height > frame->height)
                frame->height = height;
            if (--frame->due)
                break;
            if (frame->kind == D_LIST) {
                Py_ssize_t tail_at = pos;
                int done = list_tail(s, frame, &pos);
                if (done == -2) {  /* a malformed tail: the Python walker reports it */
                    value = walk_in_python(s, tail_at, &pos, &height);
                    if (value != NULL) {
                        Py_DECREF(value);
                        PyErr_SetString(PyExc_SystemError, "list tail accepted by Python only");
                    }
                    goto error;
                }
                if (done == 0)
                    break;
            }
            height = frame->height + 1;
            value = finish(frame);
            depth--;
            if (value == NULL)
                goto error;
        }
        if (depth == 0 && value != NULL) {
            PyMem_Free(stack);
            *next = pos;
            return value;
        }
    }
error:
    Py_XDECREF(value);
    while (depth)
        Py_XDECREF(stack[--depth].children);
    PyMem_Free(stack);
    return NULL;
}

/* decode_deep(data, pos) -> (term, next): the term whose tag is at `pos`, however deep. */
static PyObject *py_decode_deep(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (!ready())
        return NULL;
    if (py_walk_decode == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pykv.term._speedups: setup_walkers() has not run");
        return NULL;
    }
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "decode_deep(data, pos)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    if (pos < 0) {
        PyErr_SetString(PyExc_ValueError, "decode_deep: pos must be >= 0");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Source s = {args[0], view.buf, view.len};
    Py_ssize_t next = 0;
    PyObject *term = decode_deep(&s, pos, &next);
    PyBuffer_Release(&view);
    if (term == NULL)
        return NULL;
    return Py_BuildValue("(Nn)", term, next);
}

/* ----------------------------------------------------------------------------- encode */

static int put(PyObject *buf, const void *data, Py_ssize_t n) {
    Py_ssize_t len = PyByteArray_GET_SIZE(buf);
    if (PyByteArray_Resize(buf, len + n) < 0)
        return -1;
    memcpy(PyByteArray_AS_STRING(buf) + len, data, n);
    return 0;
}

static inline void put_be16(unsigned char *p, uint32_t v) { p[0] = v >> 8; p[1] = v; }
static inline void put_be32(unsigned char *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static int put_bytes_object(PyObject *buf, PyObject *bytes) {
    return put(buf, PyBytes_AS_STRING(bytes), PyBytes_GET_SIZE(bytes));
}

/* A tag and its 32-bit count or length: the head of LIST_EXT, MAP_EXT, BINARY_EXT... */
static int put_tag_u32(PyObject *buf, unsigned char tag, Py_ssize_t n) {
    unsigned char head[5] = {tag};
    put_be32(head + 1, (uint32_t)n);
    return put(buf, head, 5);
}

/* BINARY_EXT: what a bytes and a str (as UTF-8) both encode as */
static int put_binary(PyObject *buf, const char *data, Py_ssize_t n) {
    return put_tag_u32(buf, BINARY_EXT, n) < 0 ? -1 : put(buf, data, n);
}

static int encode_fallback(PyObject *buf, PyObject *term, int depth) {
    PyObject *result = PyObject_CallFunction(py_encode_item, "OOi", buf, term, depth);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/* An Atom's cached encoding (borrowed), or NULL: not cached yet, or not an Atom. */
static PyObject *atom_encoding(PyObject *atom) {
    if (atom == NULL || Py_TYPE(atom) != atom_type)
        return NULL;
    PyObject *name = SLOT(atom, atom_name_off);
    return name == NULL ? NULL : PyDict_GetItem(atom_encodings, name);
}

/* A u32 from an int slot; -1 with no error set when it is not one. */
static int64_t u32_of(PyObject *value) {
    if (value == NULL || !PyLong_CheckExact(value))
        return -1;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow || v < 0 || v > 0xFFFFFFFFLL) {
        PyErr_Clear();
        return -1;
    }
    return v;
}

static int encode_term(PyObject *buf, PyObject *term, int depth);

/* encode_parts(): binaries of at least `parts_from` bytes are left out of the buffer, which
 * gets their BINARY_EXT head only; (offset in the buffer where the data belongs, the bytes)
 * is appended to `parts`. Only for that call's own buffer, in its own thread: a fallback
 * encoder may run Python code that encodes something else meanwhile. */
static PyObject *parts = NULL, *parts_buf = NULL;
static PyThreadState *parts_thread = NULL;
static Py_ssize_t parts_from = PY_SSIZE_T_MAX;

static int put_part(PyObject *buf, PyObject *bytes, Py_ssize_t n) {
    if (put_tag_u32(buf, BINARY_EXT, n) < 0)
        return -1;
    PyObject *part = Py_BuildValue("(nO)", PyByteArray_GET_SIZE(buf), bytes);
    if (part == NULL)
        return -1;
    int failed = PyList_Append(parts, part);
    Py_DECREF(part);
    return failed;
}

static int encode_items(PyObject *buf, PyObject *const *items, Py_ssize_t n, int depth) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (encode_term(buf, items[i], depth) < 0)
            return -1;
    return 0;
}

static int encode_pid(PyObject *buf, PyObject *pid, int depth) {
    PyObject *node = atom_encoding(SLOT(pid, pid_off[0]));
    int64_t id = u32_of(SLOT(pid, pid_off[1])), serial = u32_of(SLOT(pid, pid_off[2])),
            creation = u32_of(SLOT(pid, pid_off[3]));
    if (node == NULL || id < 0 || serial < 0 || creation < 0)
        return encode_fallback(buf, pid, depth);
    unsigned char tail[12];
    put_be32(tail, (uint32_t)id);
    put_be32(tail + 4, (uint32_t)serial);
    put_be32(tail + 8, (uint32_t)creation);
    unsigned char tag = NEW_PID_EXT;
    if (put(buf, &tag, 1) < 0 || put_bytes_object(buf, node) < 0)
        return -1;
    return put(buf, tail, 12);
}

static int encode_reference(PyObject *buf, PyObject *ref, int depth) {
    PyObject *node = atom_encoding(SLOT(ref, ref_off[0]));
    int64_t creation = u32_of(SLOT(ref, ref_off[1]));
    PyObject *ids = SLOT(ref, ref_off[2]);
    if (node == NULL || creation < 0 || ids == NULL || !PyTuple_CheckExact(ids))
        return encode_fallback(buf, ref, depth);
    Py_ssize_t words = PyTuple_GET_SIZE(ids);
    if (words < 1 || words > MAX_REFERENCE_WORDS)
        return encode_fallback(buf, ref, depth);
    unsigned char tail[4 + 4 * MAX_REFERENCE_WORDS];
    put_be32(tail, (uint32_t)creation);
    for (Py_ssize_t i = 0; i < words; i++) {
        int64_t word = u32_of(PyTuple_GET_ITEM(ids, i));
        if (word < 0)
            return encode_fallback(buf, ref, depth);
        put_be32(tail + 4 + 4 * i, (uint32_t)word);
    }
    unsigned char head[3] = {NEWER_REFERENCE_EXT};
    put_be16(head + 1, (uint32_t)words);
    if (put(buf, head, 3) < 0 || put_bytes_object(buf, node) < 0)
        return -1;
    return put(buf, tail, 4 + 4 * words);
}

/* [] as NIL_EXT, or a list of bytes as STRING_EXT (as term_to_binary writes them): 1 when
 * written, 0 when the list is neither, -1 on error. */
static int put_flat_list(PyObject *buf, PyObject *list) {
    Py_ssize_t n = PyList_GET_SIZE(list);
    if (n == 0) {
        unsigned char nil = NIL_EXT;
        return put(buf, &nil, 1) < 0 ? -1 : 1;
    }
    PyObject **items = ((PyListObject *)list)->ob_item;
    if (PyLong_CheckExact(items[0]) && n <= 0xFFFF) {
        /* STRING_EXT, as term_to_binary writes a list of bytes */
        Py_ssize_t i = 0;
        for (; i < n; i++) {
            if (!PyLong_CheckExact(items[i]))
                break;
            int overflow;
            long v = PyLong_AsLongAndOverflow(items[i], &overflow);
            if (overflow || v < 0 || v > 255)
                break;
        }
        if (i == n) {
            Py_ssize_t len = PyByteArray_GET_SIZE(buf);
            if (PyByteArray_Resize(buf, len + 3 + n) < 0)
                return -1;
            unsigned char *p = (unsigned char *)PyByteArray_AS_STRING(buf) + len;
            p[0] = STRING_EXT;
            put_be16(p + 1, (uint32_t)n);
            for (i = 0; i < n; i++)
                p[3 + i] = (unsigned char)PyLong_AsLong(items[i]);
            return 1;
        }
    }
    return 0;
}

static int encode_list(PyObject *buf, PyObject *list, int depth) {
    int flat = put_flat_list(buf, list);
    if (flat)
        return flat < 0 ? -1 : 0;
    Py_ssize_t n = PyList_GET_SIZE(list);
    if (depth >= max_depth || n > 0xFFFFFFFFLL)
        return encode_fallback(buf, list, depth);
    if (put_tag_u32(buf, LIST_EXT, n) < 0)
        return -1;
    /* items may run Python code (a fallback encoder) that changes the list: index it anew */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list) && i < n; i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        Py_INCREF(item);
        int failed = encode_term(buf, item, depth + 1);
        Py_DECREF(item);
        if (failed)
            return -1;
    }
    if (PyList_GET_SIZE(list) < n) {
        PyErr_SetString(PyExc_RuntimeError, "list changed size while being encoded");
        return -1;
    }
    unsigned char nil = NIL_EXT;
    return put(buf, &nil, 1);
}

static int encode_map(PyObject *buf, PyObject *map, int depth) {
    Py_ssize_t n = PyDict_GET_SIZE(map);
    if (depth >= max_depth || n > 0xFFFFFFFFLL)
        return encode_fallback(buf, map, depth);
    if (put_tag_u32(buf, MAP_EXT, n) < 0)
        return -1;
    Py_ssize_t i = 0, seen = 0;
    PyObject *key, *value;
    while (PyDict_Next(map, &i, &key, &value)) {
        Py_INCREF(key);
        Py_INCREF(value);
        int failed = encode_term(buf, key, depth + 1) || encode_term(buf, value, depth + 1);
        Py_DECREF(key);
        Py_DECREF(value);
        if (failed)
            return -1;
        seen++;
    }
    if (seen != n) {
        PyErr_SetString(PyExc_RuntimeError, "dict changed size while being encoded");
        return -1;
    }
    return 0;
}

static int encode_term(PyObject *buf, PyObject *term, int depth) {
    PyTypeObject *type = Py_TYPE(term);
    if (type == atom_type) {
        PyObject *encoded = atom_encoding(term);
        return encoded ? put_bytes_object(buf, encoded) : encode_fallback(buf, term, depth);
    }
    if (type == &PyTuple_Type) {
        Py_ssize_t n = PyTuple_GET_SIZE(term);
        if (depth >= max_depth || n > 0xFFFFFFFFLL)
            return encode_fallback(buf, term, depth);
        unsigned char small[2] = {SMALL_TUPLE_EXT, (unsigned char)n};
        if ((n < 256 ? put(buf, small, 2) : put_tag_u32(buf, LARGE_TUPLE_EXT, n)) < 0)
            return -1;
        return encode_items(buf, ((PyTupleObject *)term)->ob_item, n, depth + 1);
    }
    if (type == pid_type)
        return encode_pid(buf, term, depth);
    if (type == ref_type)
        return encode_reference(buf, term, depth);
    if (type == &PyLong_Type) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(term, &overflow);
        if (!overflow && v >= 0 && v <= 255) {
            unsigned char small[2] = {SMALL_INTEGER_EXT, (unsigned char)v};
            return put(buf, small, 2);
        }
        if (!overflow && v >= INT32_MIN && v <= INT32_MAX) {
            unsigned char i32[5] = {INTEGER_EXT};
            put_be32(i32 + 1, (uint32_t)(int32_t)v);
            return put(buf, i32, 5);
        }
        PyErr_Clear();
        return encode_fallback(buf, term, depth);  /* bignums */
    }
    if (type == &PyBytes_Type) {
        Py_ssize_t n = PyBytes_GET_SIZE(term);
        if (n > 0xFFFFFFFFLL)
            return encode_fallback(buf, term, depth);
        if (n >= parts_from && buf == parts_buf && parts != NULL && PyThreadState_Get() == parts_thread)
            return put_part(buf, term, n);
        return put_binary(buf, PyBytes_AS_STRING(term), n);
    }
    if (type == &PyUnicode_Type) {
        Py_ssize_t n;
        const char *text = PyUnicode_AsUTF8AndSize(term, &n);
        if (text == NULL || n > 0xFFFFFFFFLL) {  /* lone surrogates: the Python error */
            PyErr_Clear();
            return encode_fallback(buf, term, depth);
        }
        return put_binary(buf, text, n);
    }
    if (type == &PyList_Type)
        return encode_list(buf, term, depth);
    if (type == &PyDict_Type)
        return encode_map(buf, term, depth);
    if (term == Py_None)
        return put_bytes_object(buf, enc_nil);
    if (term == Py_True)
        return put_bytes_object(buf, enc_true);
    if (term == Py_False)
        return put_bytes_object(buf, enc_false);
    if (type == &PyFloat_Type) {
        double value = PyFloat_AS_DOUBLE(term);
        if (value - value != 0.0)
            return encode_fallback(buf, term, depth);  /* inf, NaN: the Python error */
        unsigned char f[9] = {NEW_FLOAT_EXT};
        if (PyFloat_Pack8(value, (char *)f + 1, 0) < 0)
            return -1;
        return put(buf, f, 9);
    }
    if (type == improper_type) {
        PyObject *items = SLOT(term, improper_off[0]), *tail = SLOT(term, improper_off[1]);
        if (items == NULL || tail == NULL || !PyTuple_CheckExact(items) || PyTuple_GET_SIZE(items) == 0
            || depth >= max_depth)
            return encode_fallback(buf, term, depth);
        /* held: Python code run for an item (a fallback encoder) could replace the slots */
        Py_INCREF(items);
        Py_INCREF(tail);
        Py_ssize_t n = PyTuple_GET_SIZE(items);
        int failed = put_tag_u32(buf, LIST_EXT, n) < 0
                     || encode_items(buf, ((PyTupleObject *)items)->ob_item, n, depth + 1) < 0
                     || encode_term(buf, tail, depth + 1) < 0;
        Py_DECREF(items);
        Py_DECREF(tail);
        return failed ? -1 : 0;
    }
    return encode_fallback(buf, term, depth);
}

/* encode(buf, term, depth): append the encoding of `term` (no version byte) to `buf`. */
static PyObject *py_encode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (!ready())
        return NULL;
    if (nargs != 3 || !PyByteArray_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "encode(buf: bytearray, term, depth)");
        return NULL;
    }
    long depth = PyLong_AsLong(args[2]);
    if (depth == -1 && PyErr_Occurred())
        return NULL;
    if (depth < 0 || depth > max_depth) {
        PyErr_SetString(PyExc_ValueError, "encode: depth must be within 0..MAX_DEPTH");
        return NULL;
    }
    if (encode_term(args[0], args[1], (int)depth) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* encode_parts(buf, term, parts, min_size): encode(buf, term, 0), with the binaries of at
 * least min_size bytes left out of buf: (offset, bytes) for each is appended to parts, the
 * offset being where its data would have started in buf. */
static PyObject *py_encode_parts(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (!ready())
        return NULL;
    if (nargs != 4 || !PyByteArray_CheckExact(args[0]) || !PyList_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "encode_parts(buf: bytearray, term, parts: list, min_size)");
        return NULL;
    }
    Py_ssize_t min_size = PyLong_AsSsize_t(args[3]);
    if (min_size == -1 && PyErr_Occurred())
        return NULL;
    if (min_size < 1) {
        PyErr_SetString(PyExc_ValueError, "encode_parts: min_size must be at least 1");
        return NULL;
    }
    /* Another thread's call that starts while a fallback of this one runs Python code takes
     * the state over: this call's later binaries are then copied in, as encode() does. Each
     * call clears the state only while it is still its own. */
    PyObject *mine = args[2];
    parts = mine, parts_buf = args[0], parts_thread = PyThreadState_Get(), parts_from = min_size;
    int failed = encode_term(args[0], args[1], 0);
    if (parts == mine && parts_buf == args[0]) {
        parts = parts_buf = NULL;
        parts_thread = NULL;
        parts_from = PY_SSIZE_T_MAX;
    }
    if (failed)
        return NULL;
    Py_RETURN_NONE;
}

/* ----------------------------------------------------------------------------- deep encode */

/* The open containers of encode_deep(), by address: an open-addressing set of pointers, as
 * a PySet of ints costs an object per container. Removed entries become tombstones. */
typedef struct {
    void **slots;
    size_t mask, used;  /* used: live entries and tombstones */
} PathSet;

#define TOMBSTONE ((void *)1)

static inline size_t path_slot(const PathSet *set, const void *p) {
    return (size_t)(((uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ull) & set->mask;
}

/* 1 if `p` was there already, 0 once added, -1 on error. */
static int path_add(PathSet *set, void *p) {
    if (2 * (set->used + 1) > set->mask + 1) {  /* grow (or just sweep tombstones) */
        size_t live = 0;
        for (size_t i = 0; set->slots && i <= set->mask; i++)
            live += set->slots[i] != NULL && set->slots[i] != TOMBSTONE;
        size_t size = 64;
        while (size < 4 * (live + 1))
            size *= 2;
        void **slots = PyMem_Calloc(size, sizeof *slots);
        if (slots == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        PathSet bigger = {slots, size - 1, live};
        for (size_t i = 0; set->slots && i <= set->mask; i++) {
            void *q = set->slots[i];
            if (q != NULL && q != TOMBSTONE) {
                size_t j = path_slot(&bigger, q);
                while (slots[j] != NULL)
                    j = (j + 1) & bigger.mask;
                slots[j] = q;
            }
        }
        PyMem_Free(set->slots);
        *set = bigger;
    }
    size_t i = path_slot(set, p), free_at = SIZE_MAX;
    for (; set->slots[i] != NULL; i = (i + 1) & set->mask) {
        if (set->slots[i] == p)
            return 1;
        if (set->slots[i] == TOMBSTONE && free_at == SIZE_MAX)
            free_at = i;
    }
    if (free_at == SIZE_MAX) {
        set->used++;
        free_at = i;
    }
    set->slots[free_at] = p;
    return 0;
}

static void path_remove(PathSet *set, const void *p) {
    for (size_t i = path_slot(set, p); set->slots[i] != NULL; i = (i + 1) & set->mask)
        if (set->slots[i] == p) {
            set->slots[i] = TOMBSTONE;
            return;
        }
}

typedef struct {
    PyObject *container;  /* held; its id is in the path set */
    PyObject *items;      /* held: the list or tuple whose items follow the head */
    Py_ssize_t next;      /* index of the next item */
    PyObject *tail;       /* held: an ImproperList's tail, encoded after the items; or NULL */
    int nil;              /* a proper list: NIL_EXT after the items */
} EncodeFrame;

/* Append the encoding of `term`, however deep, without recursion. Exact tuples, lists,
 * dicts and ImproperLists are opened here; other terms that nest (FrozenList, Map,
 * subclasses...) go to the Python walker, leaves to encode_term(). A container met again
 * inside itself is a cycle: the Python walker's error. */
static int encode_deep(PyObject *buf, PyObject *term) {
    EncodeFrame *stack = NULL;
    Py_ssize_t depth = 0, room = 0;
    PathSet path = {NULL, 0, 0};  /* the open containers */
    Py_INCREF(term);
    PyObject *item = term;  /* held */
    for (;;) {
        if (item != NULL) {
            PyTypeObject *type = Py_TYPE(item);
            PyObject *items = NULL, *tail = NULL;
            int nil = 0;
            unsigned char head[5];
            Py_ssize_t head_len = 5;
            if (type == &PyTuple_Type) {
                Py_ssize_t n = PyTuple_GET_SIZE(item);
                if (n < 256) {
                    head[0] = SMALL_TUPLE_EXT, head[1] = (unsigned char)n, head_len = 2;
                } else {
                    head[0] = LARGE_TUPLE_EXT;
                    put_be32(head + 1, (uint32_t)n);
                }
                Py_INCREF(item);
                items = item;
            } else if (type == &PyList_Type) {
                int flat = put_flat_list(buf, item);
                if (flat < 0)
                    goto error;
                if (flat) {
                    Py_CLEAR(item);
                    goto next;
                }
                head[0] = LIST_EXT;
                put_be32(head + 1, (uint32_t)PyList_GET_SIZE(item));
                Py_INCREF(item);
                items = item, nil = 1;
            } else if (type == &PyDict_Type) {
                head[0] = MAP_EXT;
                put_be32(head + 1, (uint32_t)PyDict_GET_SIZE(item));
                items = PyList_New(0);  /* keys and values, in order */
                if (items == NULL)
                    goto error;
                Py_ssize_t i = 0;
                PyObject *key, *value;
                while (PyDict_Next(item, &i, &key, &value))
                    if (PyList_Append(items, key) < 0 || PyList_Append(items, value) < 0) {
                        Py_DECREF(items);
                        goto error;
                    }
            } else if (type == improper_type && SLOT(item, improper_off[0]) != NULL
                       && PyTuple_CheckExact(SLOT(item, improper_off[0]))
                       && PyTuple_GET_SIZE(SLOT(item, improper_off[0])) > 0
                       && SLOT(item, improper_off[1]) != NULL) {
                items = SLOT(item, improper_off[0]), tail = SLOT(item, improper_off[1]);
                head[0] = LIST_EXT;
                put_be32(head + 1, (uint32_t)PyTuple_GET_SIZE(items));
                Py_INCREF(items);
                Py_INCREF(tail);
            } else {
                int failed;
                if (type == atom_type || type == &PyLong_Type || type == &PyBytes_Type
                    || type == &PyUnicode_Type || type == &PyFloat_Type || type == pid_type
                    || type == ref_type || item == Py_None || item == Py_True || item == Py_False)
                    failed = encode_term(buf, item, 0);  /* leaves */
                else {
                    PyObject *done = PyObject_CallFunctionObjArgs(py_walk_encode, buf, item, NULL);
                    failed = done == NULL;
                    Py_XDECREF(done);
                }
                Py_CLEAR(item);
                if (failed)
                    goto error;
                goto next;
            }
            /* a container opened here */
            int seen = path_add(&path, item);
            if (seen > 0)  /* as the Python walker says it */
                PyErr_SetString(term_error, "cannot encode a cyclic structure (a container that "
                                            "holds itself) as an Erlang term");
            if (seen == 0 && depth == room) {
                Py_ssize_t bigger = room ? 2 * room : 64;
                EncodeFrame *grown = PyMem_Realloc(stack, bigger * sizeof *stack);
                if (grown == NULL) {
                    PyErr_NoMemory();
                    seen = -1;
                } else {
                    stack = grown, room = bigger;
                }
            }
            if (seen != 0 || put(buf, head, head_len) < 0) {
                Py_DECREF(items);
                Py_XDECREF(tail);
                goto error;
            }
            stack[depth++] = (EncodeFrame){item, items, 0, tail, nil};
            item = NULL;
        }
    next:
        /* the next item of the innermost open container, or close it */
        if (depth == 0)
            break;
        EncodeFrame *frame = &stack[depth - 1];
        Py_ssize_t size = PyList_Check(frame->items) ? PyList_GET_SIZE(frame->items)
                                                     : PyTuple_GET_SIZE(frame->items);
        if (frame->next < size) {
            item = PyList_Check(frame->items) ? PyList_GET_ITEM(frame->items, frame->next)
                                              : PyTuple_GET_ITEM(frame->items, frame->next);
            Py_INCREF(item);
            frame->next++;
            continue;
        }
        if (frame->tail != NULL) {
            item = frame->tail;  /* the reference moves to item */
            frame->tail = NULL;
            continue;
        }
        if (frame->nil) {
            if (PyList_CheckExact(frame->container) && PyList_GET_SIZE(frame->container) != frame->next) {
                PyErr_SetString(PyExc_RuntimeError, "list changed size while being encoded");
                goto error;
            }
            unsigned char nil = NIL_EXT;
            if (put(buf, &nil, 1) < 0)
                goto error;
        }
        path_remove(&path, frame->container);
        Py_DECREF(frame->container);
        Py_DECREF(frame->items);
        depth--;
        goto next;
    }
    PyMem_Free(path.slots);
    PyMem_Free(stack);
    return 0;
error:
    Py_XDECREF(item);
    while (depth) {
        EncodeFrame *frame = &stack[--depth];
        Py_DECREF(frame->container);
        Py_DECREF(frame->items);
        Py_XDECREF(frame->tail);
    }
    PyMem_Free(path.slots);
    PyMem_Free(stack);
    return -1;
}

/* encode_deep(buf, term): encode(buf, term, 0), however deep. */
static PyObject *py_encode_deep(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (!ready())
        return NULL;
    if (py_walk_encode == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pykv.term._speedups: setup_walkers() has not run");
        return NULL;
    }
    if (nargs != 2 || !PyByteArray_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "encode_deep(buf: bytearray, term)");
        return NULL;
    }
    if (encode_deep(args[0], args[1]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* ----------------------------------------------------------------------------- setup */

static int slot_offsets(PyTypeObject *type, const char *const *names, Py_ssize_t *offsets, int n) {
    for (int i = 0; i < n; i++) {
        PyObject *descr = PyDict_GetItemString(type->tp_dict, names[i]);
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", type->tp_name, names[i]);
            return -1;
        }
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type != T_OBJECT_EX && member->type != T_OBJECT) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not an object slot", type->tp_name, names[i]);
            return -1;
        }
        offsets[i] = member->offset;
    }
    return 0;
}

static PyObject *py_setup(PyObject *self, PyObject *args) {
    /* Parsed and checked into locals first: a failed setup() leaves the module as it was. */
    int depth;
    PyObject *decoders, *encode_item, *freeze, *terms, *atom_dict, *pid_dict, *encodings;
    PyObject *types[4], *nil, *true_, *false_;
    if (!PyArg_ParseTuple(args, "iO!OOO!O!O!O!O!O!O!O!SSS", &depth,
                          &PyList_Type, &decoders, &encode_item, &freeze,
                          &PyDict_Type, &terms, &PyDict_Type, &atom_dict, &PyDict_Type, &pid_dict,
                          &PyDict_Type, &encodings, &PyType_Type, &types[0], &PyType_Type, &types[1],
                          &PyType_Type, &types[2], &PyType_Type, &types[3], &nil, &true_, &false_))
        return NULL;
    if (PyList_GET_SIZE(decoders) != 256) {
        PyErr_SetString(PyExc_ValueError, "need 256 decoders");
        return NULL;
    }
    static const char *const atom_names[] = {"name"};
    static const char *const pid_names[] = {"node", "id", "serial", "creation"};
    static const char *const ref_names[] = {"node", "creation", "ids"};
    static const char *const improper_names[] = {"items", "tail"};
    Py_ssize_t name_off, p_off[4], r_off[3], i_off[2];
    if (slot_offsets((PyTypeObject *)types[0], atom_names, &name_off, 1) < 0
        || slot_offsets((PyTypeObject *)types[1], pid_names, p_off, 4) < 0
        || slot_offsets((PyTypeObject *)types[2], ref_names, r_off, 3) < 0
        || slot_offsets((PyTypeObject *)types[3], improper_names, i_off, 2) < 0)
        return NULL;
    PyObject *keep[] = {decoders, encode_item, freeze, terms, atom_dict, pid_dict, encodings,
                        types[0], types[1], types[2], types[3], nil, true_, false_};
    for (size_t i = 0; i < sizeof keep / sizeof *keep; i++)
        Py_INCREF(keep[i]);  /* held for the life of the process (a later setup() leaks these) */
    max_depth = depth;
    py_decoders = decoders;
    py_encode_item = encode_item;
    py_freeze = freeze;
    atom_terms = terms;
    atoms = atom_dict;
    pids = pid_dict;
    atom_encodings = encodings;
    atom_type = (PyTypeObject *)types[0];
    pid_type = (PyTypeObject *)types[1];
    ref_type = (PyTypeObject *)types[2];
    improper_type = (PyTypeObject *)types[3];
    atom_name_off = name_off;
    memcpy(pid_off, p_off, sizeof pid_off);
    memcpy(ref_off, r_off, sizeof ref_off);
    memcpy(improper_off, i_off, sizeof improper_off);
    enc_nil = nil;
    enc_true = true_;
    enc_false = false_;
    Py_RETURN_NONE;
}

static PyObject *py_setup_walkers(PyObject *self, PyObject *args) {
    PyObject *walk_decode, *build_map, *walk_encode, *error;
    if (!PyArg_ParseTuple(args, "OOOO", &walk_decode, &build_map, &walk_encode, &error))
        return NULL;
    if (!PyCallable_Check(walk_decode) || !PyCallable_Check(build_map) || !PyCallable_Check(walk_encode)
        || !PyExceptionClass_Check(error)) {
        PyErr_SetString(PyExc_TypeError, "setup_walkers needs three callables and an exception class");
        return NULL;
    }
    Py_INCREF(walk_decode);
    Py_INCREF(build_map);
    Py_INCREF(walk_encode);
    Py_INCREF(error);
    Py_XSETREF(py_walk_decode, walk_decode);
    Py_XSETREF(py_build_map, build_map);
    Py_XSETREF(py_walk_encode, walk_encode);
    Py_XSETREF(term_error, error);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"setup", py_setup, METH_VARARGS, "Hand over the objects shared with codec.py."},
    {"setup_walkers", py_setup_walkers, METH_VARARGS,
     "setup_walkers(walk_decode, build_map, walk_encode, TermError): what deep terms need."},
    {"decode_deep", (PyCFunction)(void (*)(void))py_decode_deep, METH_FASTCALL,
     "decode_deep(data, pos) -> (term, next): decode(), for terms of any depth."},
    {"encode_deep", (PyCFunction)(void (*)(void))py_encode_deep, METH_FASTCALL,
     "encode_deep(buf, term): encode(), for terms of any depth."},
    {"decode", (PyCFunction)(void (*)(void))py_decode, METH_FASTCALL,
     "decode(data, pos, depth) -> (term, next): the term whose tag is at pos."},
    {"encode", (PyCFunction)(void (*)(void))py_encode, METH_FASTCALL,
     "encode(buf, term, depth): append the encoding of term (no version byte) to buf."},
    {"encode_parts", (PyCFunction)(void (*)(void))py_encode_parts, METH_FASTCALL,
     "encode_parts(buf, term, parts, min_size): encode(buf, term, 0), the binaries of at least "
     "min_size bytes left out: (offset, bytes) appended to parts for each."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "pykv.term._speedups",
    "The common paths of pykv.term.codec, in C (see codec.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
