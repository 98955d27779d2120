/* The encoded layers of a text, found and decoded in one native pass.
 *
 * The same result as tollgate/dlp/content.py's `_layers_in_python` (the reference, and the
 * fallback where this module is not built); a test checks the two agree. Python spent most
 * of a clean request's inspection here: an ordinary body holds dozens of runs of base64
 * characters (words, ids, image data), and each cost a loop turn, a decode and a check.
 *
 *   encoded_layers(data: bytes) -> (base64_texts, hex_texts, separated_hex_possible)
 *
 * data: the text as UTF-8 (bytes >= 0x80 are separators, as non-ASCII characters are).
 * base64_texts: each maximal run of base64 characters at least 12 long that mixes upper and
 *   lower case and decodes (base64 or base64url) to text, as decode_layer_text accepts it.
 * hex_texts: each maximal run of hex digits at least 32 long, inside such a base64 run of
 *   any case, cut to whole bytes, that decodes to wholly printable UTF-8 text.
 * separated_hex_possible: whether "aa(?: aa){15}" occurs in the text masked to "a" for a
 *   base64 character and " " for any other byte (a superset of separated hex in ASCII text).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define B64_MIN_RUN 12
#define HEX_MIN_RUN 32
#define HEX_GROUPS 16 /* "aa" and 15 more " aa" */

static signed char b64_value[256];  /* -1: not a base64 (or base64url) character */
static signed char hex_value[256];  /* -1: not a hex digit */
enum { UPPER = 1, LOWER = 2, CONTROL = 4, BASE64 = 8, HEX = 16 };
static unsigned char byte_class[256];

static void init_tables(void)
{
    const char *alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    memset(b64_value, -1, sizeof b64_value);
    memset(hex_value, -1, sizeof hex_value);
    for (int i = 0; i < 64; i++)
        b64_value[(unsigned char)alphabet[i]] = (signed char)i;
    b64_value['-'] = 62; /* base64url */
    b64_value['_'] = 63;
    memset(byte_class, 0, sizeof byte_class);
    for (int c = 0; c < 256; c++)
        if (b64_value[c] >= 0)
            byte_class[c] |= BASE64;
    for (int c = 'A'; c <= 'Z'; c++)
        byte_class[c] |= UPPER;
    for (int c = 'a'; c <= 'z'; c++)
        byte_class[c] |= LOWER;
    for (int c = 0; c < 0x20; c++)
        byte_class[c] = CONTROL;
    byte_class['\t'] = byte_class['\n'] = byte_class['\r'] = 0;
    byte_class[0x7f] = CONTROL;
    for (int i = 0; i < 10; i++)
        hex_value['0' + i] = (signed char)i;
    for (int i = 0; i < 6; i++)
        hex_value['a' + i] = hex_value['A' + i] = (signed char)(10 + i);
    for (int c = 0; c < 256; c++)
        if (hex_value[c] >= 0)
            byte_class[c] |= HEX;
}

/* Whether the bytes are valid UTF-8 as Python's strict decoder takes it: no overlong forms,
 * no surrogates, nothing above U+10FFFF. (Asking PyUnicode_DecodeUTF8 instead raises and
 * clears an exception for each of the many runs that are not text: slow.) */
static int valid_utf8(const unsigned char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int more;
        unsigned char low = 0x80, high = 0xbf; /* the allowed range of the second byte */
        if (c >= 0xc2 && c <= 0xdf)
            more = 1;
        else if (c >= 0xe0 && c <= 0xef) {
            more = 2;
            if (c == 0xe0)
                low = 0xa0; /* overlong */
            else if (c == 0xed)
                high = 0x9f; /* surrogates */
        } else if (c >= 0xf0 && c <= 0xf4) {
            more = 3;
            if (c == 0xf0)
                low = 0x90; /* overlong */
            else if (c == 0xf4)
                high = 0x8f; /* above U+10FFFF */
        } else
            return 0;
        if (i + more >= n)
            return 0;
        if (s[i + 1] < low || s[i + 1] > high)
            return 0;
        for (int k = 2; k <= more; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
        i += more + 1;
    }
    return 1;
}

/* Python's test for a decoded layer: valid UTF-8; then wholly printable, or (when
 * `tolerant`) more than 95% printable counting \r \n \t as printable. Returns a new str,
 * NULL without an exception when rejected, NULL with one on memory failure. */
static PyObject *decode_layer_text(const unsigned char *buf, Py_ssize_t n, int tolerant)
{
    Py_ssize_t controls = 0, spaces = 0;
    int ascii = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = buf[i];
        if (c >= 0x80)
            ascii = 0;
        else if (c == '\t' || c == '\n' || c == '\r')
            spaces++;
        else if (c < 0x20 || c == 0x7f)
            controls++;
    }
    if (n == 0)
        return NULL;
    if (ascii) {
        Py_ssize_t printable = n - controls - spaces;
        if (printable != n && !(tolerant && (double)(printable + spaces) / (double)n > 0.95))
            return NULL;
        return PyUnicode_DecodeASCII((const char *)buf, n, NULL);
    }
    /* Each control byte is a character that is not printable, and a text has no more
     * characters than bytes: this many cannot pass either test. */
    if (controls > 0 && (!tolerant || (double)controls >= 0.05 * (double)n))
        return NULL;
    if (!valid_utf8(buf, n))
        return NULL;
    PyObject *text = PyUnicode_DecodeUTF8((const char *)buf, n, NULL);
    if (text == NULL)
        return NULL;
    Py_ssize_t length = PyUnicode_GET_LENGTH(text), printable = 0, others = 0;
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    for (Py_ssize_t i = 0; i < length; i++) {
        Py_UCS4 ch = PyUnicode_READ(kind, data, i);
        if (Py_UNICODE_ISPRINTABLE(ch))
            printable++;
        else if (ch == '\t' || ch == '\n' || ch == '\r')
            others++;
    }
    if (printable == length || (tolerant && length > 0 && (double)(printable + others) / (double)length > 0.95))
        return text;
    Py_DECREF(text);
    return NULL;
}

static int append_new(PyObject *list, PyObject *item)
{
    int failed = PyList_Append(list, item);
    Py_DECREF(item);
    return failed;
}

/* A base64 run: the text it decodes to, appended to `out` when accepted. As Python's
 * binascii.a2b_base64(run + padding): a run one longer than a multiple of four is invalid,
 * the bits of an incomplete last byte are dropped. */
static int base64_layer(const unsigned char *run, Py_ssize_t n, unsigned char *buf, PyObject *out)
{
    if (n % 4 == 1)
        return 0;
    /* More than 5% control bytes fail decode_layer_text's test: stop decoding there
     * (binary data such as images fails within a few bytes). */
    Py_ssize_t total = n * 6 / 8, controls = 0, produced = 0;
    unsigned int acc = 0;
    int bits = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        acc = (acc << 6) | (unsigned int)b64_value[run[i]];
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            unsigned char byte = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
            buf[produced++] = byte;
            if ((byte_class[byte] & CONTROL) && ++controls * 20 > total)
                return 0;
        }
    }
    PyObject *text = decode_layer_text(buf, produced, 1);
    if (text == NULL)
        return PyErr_Occurred() ? -1 : 0;
    return append_new(out, text);
}

/* A run of hex digits: the text it decodes to (whole bytes), appended to `out` when it is
 * wholly printable. */
static int hex_layer(const unsigned char *run, Py_ssize_t n, unsigned char *buf, PyObject *out)
{
    n -= n % 2;
    for (Py_ssize_t j = 0; j < n; j += 2) {
        buf[j / 2] = (unsigned char)(hex_value[run[j]] << 4 | hex_value[run[j + 1]]);
        if (byte_class[buf[j / 2]] & CONTROL) /* not printable: fails at once */
            return 0;
    }
    PyObject *text = decode_layer_text(buf, n / 2, 0);
    if (text == NULL)
        return PyErr_Occurred() ? -1 : 0;
    return append_new(out, text);
}

static PyObject *encoded_layers(PyObject *module, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *data = view.buf;
    Py_ssize_t n = view.len;
    PyObject *b64 = PyList_New(0), *hex = PyList_New(0), *result = NULL;
    unsigned char *buf = PyMem_Malloc(n > 0 ? (size_t)n : 1);
    if (b64 == NULL || hex == NULL || buf == NULL) {
        if (buf == NULL)
            PyErr_NoMemory();
        goto done;
    }
    /* Separated hex ("aa aa aa ..." in the masked text) is a chain of runs of exactly two
     * characters, each followed by exactly one separator; the first may be the end of a
     * longer run, the last the start of one. `chain`: the groups ("aa ") just before a run. */
    Py_ssize_t chain = 0;
    int separated = 0;
    Py_ssize_t i = 0;
    while (i < n) {
        if (!(byte_class[data[i]] & BASE64)) {
            i++;
            continue;
        }
        /* A base64 run, and the runs of hex digits inside it. */
        Py_ssize_t start = i, hex_length = 0;
        unsigned char cases = 0;
        for (; i < n; i++) {
            unsigned char class = byte_class[data[i]];
            if (!(class & BASE64))
                break;
            cases |= class;
            Py_ssize_t is_hex = (class & HEX) != 0;
            if (hex_length >= HEX_MIN_RUN && !is_hex && hex_layer(data + i - hex_length, hex_length, buf, hex) < 0)
                goto done;
            hex_length = (hex_length + 1) & -is_hex; /* no branch: hex and other letters alternate */
        }
        if (hex_length >= HEX_MIN_RUN && hex_layer(data + i - hex_length, hex_length, buf, hex) < 0)
            goto done;
        Py_ssize_t length = i - start;
        if (length >= 2 && chain >= HEX_GROUPS - 1)
            separated = 1;
        int one_separator = i + 1 < n && (byte_class[data[i + 1]] & BASE64);
        chain = length < 2 || !one_separator ? 0 : length == 2 ? chain + 1 : 1;
        if (length >= B64_MIN_RUN && (cases & (UPPER | LOWER)) == (UPPER | LOWER)
                && base64_layer(data + start, length, buf, b64) < 0)
            goto done;
    }
    result = Py_BuildValue("(OOO)", b64, hex, separated ? Py_True : Py_False);
done:
    PyMem_Free(buf);
    Py_XDECREF(b64);
    Py_XDECREF(hex);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"encoded_layers", encoded_layers, METH_O,
     "encoded_layers(data: bytes) -> (base64_texts, hex_texts, separated_hex_possible)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "tollgate.dlp._layers",
    "The encoded layers of a text, found and decoded in one native pass.", -1, methods,
};

PyMODINIT_FUNC PyInit__layers(void)
{
    init_tables();
    return PyModule_Create(&module);
}
