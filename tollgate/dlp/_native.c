/* The native parts of a DLP inspection, each one pass over a text's bytes:
 *
 *   encoded_layers(data: bytes) -> (base64_texts, hex_texts, separated_hex_possible)
 *   number_shapes(data: bytes) -> int
 *   percent_decoded(data: bytes, plus: bool) -> str
 *   has_entity(data: bytes) -> bool
 *
 * encoded_layers gives the same result as tollgate/dlp/content.py's
 * `_encoded_layers_in_python` (the reference, and the fallback where this module is not
 * built); a test checks the two agree. Python spent most of a clean request's inspection
 * there: an ordinary body holds dozens of runs of base64 characters (words, ids, image
 * data), and each cost a loop turn, a decode and a check.
 *
 * data: the text as UTF-8 (bytes >= 0x80 are separators, as non-ASCII characters are).
 * base64_texts: each maximal run of base64 characters at least 12 long that mixes upper and
 *   lower case and decodes (base64 or base64url) to text, as decode_layer_text accepts it.
 * hex_texts: each maximal run of hex digits at least 32 long, inside such a base64 run of
 *   any case, cut to whole bytes, that decodes to wholly printable UTF-8 text.
 * separated_hex_possible: whether "aa(?: aa){15}" occurs in the text masked to "a" for a
 *   base64 character and " " for any other byte (a superset of separated hex in ASCII text).
 *
 * percent_decoded: urllib.parse.unquote (unquote_plus with `plus`) of ASCII text: each %XX
 *   a byte, any other "%" itself, the bytes read as UTF-8 with errors replaced. urllib does
 *   it in a Python loop, an escape at a time; forms are full of them.
 *
 * has_entity: whether &(?:#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+); occurs in ASCII text, found from
 *   each ";" backwards (in a form, "&" separates every field).
 *
 * number_shapes: for ASCII text, a bit for each number detector whose regex may match (see
 * SHAPE_* below): the prefilter's gate for them. In hyperscan these patterns, which open
 * with a character class and no literal, each cost more than several others together (the
 * card number's leading boundary as much as all of them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#ifdef __SSE2__
#include <emmintrin.h>
/* Bytes of v in lo..hi, as 0xff (signed compares: bytes >= 0x80 are negative, in no range). */
#define IN(v, lo, hi) _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8((lo) - 1)), _mm_cmplt_epi8(v, _mm_set1_epi8((hi) + 1)))
#define IS(v, c) _mm_cmpeq_epi8(v, _mm_set1_epi8(c))
#endif

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
    /* Stop decoding where decode_layer_text's test is sure to fail: more than 5% control
     * bytes, or bytes that cannot be UTF-8 (binary data such as images: within a few bytes
     * of the first byte >= 0x80). `need`: the continuation bytes still due. */
    Py_ssize_t total = n * 6 / 8, controls = 0, produced = 0;
    unsigned int acc = 0;
    int bits = 0, need = 0;
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
            if (need > 0) {
                if ((byte & 0xc0) != 0x80)
                    return 0;
                need--;
            } else if (byte >= 0x80) {
                need = byte >= 0xc2 && byte <= 0xdf ? 1 : byte >= 0xe0 && byte <= 0xef ? 2 : byte >= 0xf0 && byte <= 0xf4 ? 3 : -1;
                if (need < 0)
                    return 0;
            }
        }
    }
    PyObject *text = decode_layer_text(buf, produced, 1);
    if (text == NULL)
        return PyErr_Occurred() ? -1 : 0;
    return append_new(out, text);
}

#ifdef __SSE2__
/* 16 bytes of a long base64 run at once: 0 when not all are base64 characters, else 1 with
 * the case bits seen added to *cases and *hex_length carried through them (a hex run that
 * ends inside, if long enough, passed to hex_layer). -1 on error. */
static int hex_layer(const unsigned char *run, Py_ssize_t n, unsigned char *buf, PyObject *out);

static int base64_block(const unsigned char *data, Py_ssize_t i, unsigned char *cases, Py_ssize_t *hex_length,
                        unsigned char *buf, PyObject *hex)
{
    __m128i v = _mm_loadu_si128((const __m128i *)(data + i));
    __m128i digit = IN(v, '0', '9'), upper = IN(v, 'A', 'Z'), lower = IN(v, 'a', 'z');
    __m128i base64 = _mm_or_si128(_mm_or_si128(digit, _mm_or_si128(upper, lower)),
                                  _mm_or_si128(_mm_or_si128(IS(v, '+'), IS(v, '/')), _mm_or_si128(IS(v, '-'), IS(v, '_'))));
    if (_mm_movemask_epi8(base64) != 0xffff)
        return 0;
    *cases |= (_mm_movemask_epi8(upper) ? UPPER : 0) | (_mm_movemask_epi8(lower) ? LOWER : 0);
    unsigned int hex_bits = (unsigned int)_mm_movemask_epi8(_mm_or_si128(digit, _mm_or_si128(IN(v, 'a', 'f'), IN(v, 'A', 'F'))));
    if (hex_bits == 0xffff) {
        *hex_length += 16;
        return 1;
    }
    int lead = __builtin_ctz(~hex_bits); /* hex bytes that carry on the run before the block */
    *hex_length += lead;
    if (*hex_length >= HEX_MIN_RUN && hex_layer(data + i + lead - *hex_length, *hex_length, buf, hex) < 0)
        return -1;
    /* Runs inside the block are shorter than HEX_MIN_RUN; the one at its end carries on. */
    *hex_length = __builtin_clz(~(hex_bits << 16));
    return 1;
}
#endif

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

/* One base64 run from `start` (data[start] a base64 character, the byte before not): its hex
 * runs, and its decoding when it is long enough and mixes cases. Its end, or -1 on error. */
static Py_ssize_t base64_run(const unsigned char *data, Py_ssize_t n, Py_ssize_t start, unsigned char *buf,
                             PyObject *b64, PyObject *hex)
{
    Py_ssize_t i = start, hex_length = 0, blocks_from = start + 16;
    unsigned char cases = 0;
    for (; i < n; i++) {
#ifdef __SSE2__
        /* In a long run (image data), whole blocks of 16 while they last. */
        while (i >= blocks_from && i + 16 <= n) {
            int whole = base64_block(data, i, &cases, &hex_length, buf, hex);
            if (whole < 0)
                return -1;
            if (!whole) {
                blocks_from = i + 16; /* the run ends in this block */
                break;
            }
            i += 16;
        }
        if (i >= n)
            break;
#endif
        unsigned char class = byte_class[data[i]];
        if (!(class & BASE64))
            break;
        cases |= class;
        /* No branch on whether this is a hex digit: hex digits and other letters alternate. */
        Py_ssize_t is_hex = (class & HEX) != 0;
        int ended = (hex_length >= HEX_MIN_RUN) & !is_hex; /* rare */
        if (__builtin_expect(ended, 0) && hex_layer(data + i - hex_length, hex_length, buf, hex) < 0)
            return -1;
        hex_length = (hex_length + 1) & -is_hex;
    }
    if (hex_length >= HEX_MIN_RUN && hex_layer(data + i - hex_length, hex_length, buf, hex) < 0)
        return -1;
    if (i - start >= B64_MIN_RUN && (cases & (UPPER | LOWER)) == (UPPER | LOWER)
            && base64_layer(data + start, i - start, buf, b64) < 0)
        return -1;
    return i;
}

/* Bit k: data[at + k] is a base64 character (0 past the end); with `classes`, also the masks
 * of upper-case letters, lower-case letters and hex digits. */
typedef struct {
    uint64_t base64, upper, lower, hex;
} Masks;

static Masks masks_at(const unsigned char *data, Py_ssize_t n, Py_ssize_t at, int classes)
{
    Masks m = {0, 0, 0, 0};
#ifdef __SSE2__
    if (at + 64 <= n) {
        for (int b = 0; b < 4; b++) {
            __m128i v = _mm_loadu_si128((const __m128i *)(data + at + 16 * b));
            __m128i digit = IN(v, '0', '9'), upper = IN(v, 'A', 'Z'), lower = IN(v, 'a', 'z');
            __m128i base64 = _mm_or_si128(_mm_or_si128(digit, _mm_or_si128(upper, lower)),
                                          _mm_or_si128(_mm_or_si128(IS(v, '+'), IS(v, '/')), _mm_or_si128(IS(v, '-'), IS(v, '_'))));
            int shift = 16 * b;
            m.base64 |= (uint64_t)(unsigned int)_mm_movemask_epi8(base64) << shift;
            if (classes) {
                __m128i hex = _mm_or_si128(digit, _mm_or_si128(IN(v, 'a', 'f'), IN(v, 'A', 'F')));
                m.upper |= (uint64_t)(unsigned int)_mm_movemask_epi8(upper) << shift;
                m.lower |= (uint64_t)(unsigned int)_mm_movemask_epi8(lower) << shift;
                m.hex |= (uint64_t)(unsigned int)_mm_movemask_epi8(hex) << shift;
            }
        }
        return m;
    }
#endif
    for (Py_ssize_t k = 0; k < 64 && at + k < n; k++) {
        unsigned char class = byte_class[data[at + k]];
        m.base64 |= (uint64_t)((class & BASE64) != 0) << k;
        m.upper |= (uint64_t)((class & UPPER) != 0) << k;
        m.lower |= (uint64_t)((class & LOWER) != 0) << k;
        m.hex |= (uint64_t)((class & HEX) != 0) << k;
    }
    return m;
}

typedef unsigned __int128 bits128;

/* Whether `bits` holds a run of `length` set bits (length a power of two). */
static int has_run(bits128 bits, int length)
{
    for (int step = 1; step < length && bits; step *= 2)
        bits &= bits >> step;
    return bits != 0;
}

/* The functions that take one bytes-like argument: `function` on its bytes. */
static PyObject *on_bytes(PyObject *arg, PyObject *(*function)(const unsigned char *, Py_ssize_t))
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = function(view.buf, view.len);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *layers_of(const unsigned char *data, Py_ssize_t n)
{
    PyObject *b64 = PyList_New(0), *hex = PyList_New(0), *result = NULL;
    unsigned char *buf = PyMem_Malloc(n > 0 ? (size_t)n : 1);
    if (b64 == NULL || hex == NULL || buf == NULL) {
        if (buf == NULL)
            PyErr_NoMemory();
        goto done;
    }
    /* 64 bytes at a time, as bit masks of their base64 characters, with the next 64 to look
     * ahead into. Only runs of at least B64_MIN_RUN are looked at one by one, and only the
     * longest (image data) and those holding a long hex run byte by byte: ordinary text is
     * short words and numbers. Separated hex is a pattern of the mask: a chain of "aa "
     * groups (two base64 characters, one other byte) and a last "aa". */
    int separated = 0;
    Py_ssize_t resume = 0; /* the runs before this are done */
    uint64_t previous = 0, current = masks_at(data, n, 0, 0).base64;
    for (Py_ssize_t at = 0; at < n; at += 64) {
        uint64_t next = at + 64 < n ? masks_at(data, n, at + 64, 0).base64 : 0;
        bits128 w = (bits128)current | (bits128)next << 64;
        bits128 pair = w & (w >> 1), group = pair & ~(w >> 2);
        /* A chain needs 15 groups in its 47 bytes: most text has far fewer. */
        if (!separated && __builtin_popcountll((uint64_t)group) + __builtin_popcountll((uint64_t)(group >> 64)) >= HEX_GROUPS - 1) {
            bits128 chain = group;
            for (int k = 1; k < HEX_GROUPS - 1; k++)
                chain &= group >> (3 * k);
            separated = (uint64_t)(chain & (pair >> (3 * (HEX_GROUPS - 1)))) != 0;
        }
        /* Bit k: B64_MIN_RUN (12) base64 characters from k on. */
        bits128 two = pair, four = two & (two >> 2), eight = four & (four >> 4), twelve = eight & (four >> 8);
        uint64_t starts = (uint64_t)(twelve & ~((w << 1) | (previous >> 63)));
        Masks here = {0, 0, 0, 0}, ahead = {0, 0, 0, 0};
        if (starts) {
            here = masks_at(data, n, at, 1);
            ahead = at + 64 < n ? masks_at(data, n, at + 64, 1) : ahead;
        }
        for (; starts; starts &= starts - 1) {
            int bit = __builtin_ctzll(starts);
            Py_ssize_t start = at + bit;
            if (start < resume)
                continue;
            /* Where the run ends: the lowest set bit of `after`, if any (none: it fills the
             * window, as image data can). */
            bits128 after = ~(w >> bit);
            int length = (uint64_t)after ? __builtin_ctzll((uint64_t)after)
                       : (uint64_t)(after >> 64) ? 64 + __builtin_ctzll((uint64_t)(after >> 64)) : 128;
            bits128 run = bit + length < 128 ? (((bits128)1 << length) - 1) << bit : 0;
            bits128 hex_digits = ((bits128)here.hex | (bits128)ahead.hex << 64) & run;
            if (bit + length >= 128 || has_run(hex_digits, HEX_MIN_RUN)) { /* may go on past the window */
                resume = base64_run(data, n, start, buf, b64, hex);
                if (resume < 0)
                    goto done;
                continue;
            }
            resume = start + length;
            int upper = (((bits128)here.upper | (bits128)ahead.upper << 64) & run) != 0;
            int lower = (((bits128)here.lower | (bits128)ahead.lower << 64) & run) != 0;
            if (upper && lower && base64_layer(data + start, length, buf, b64) < 0)
                goto done;
        }
        previous = current;
        current = next;
    }
    result = Py_BuildValue("(OOO)", b64, hex, separated ? Py_True : Py_False);
done:
    PyMem_Free(buf);
    Py_XDECREF(b64);
    Py_XDECREF(hex);
    return result;
}

static PyObject *encoded_layers(PyObject *module, PyObject *arg)
{
    return on_bytes(arg, layers_of);
}

/* --- number shapes ---------------------------------------------------------------------
 * Each test is a superset of a built-in detector's regex (tollgate/dlp/detectors.py) on
 * ASCII text, where \w is [A-Za-z0-9_]; a test checks them against the regexes. */

enum { SHAPE_CARD = 1, SHAPE_SSN = 2, SHAPE_IBAN = 4, SHAPE_NINO = 8, SHAPE_ALL = 15 };

static int is_digit(const unsigned char *t, Py_ssize_t n, Py_ssize_t i) { return i < n && t[i] >= '0' && t[i] <= '9'; }
static int is_upper(const unsigned char *t, Py_ssize_t n, Py_ssize_t i) { return i < n && t[i] >= 'A' && t[i] <= 'Z'; }
static int is_word(unsigned char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_'; }

/* payment_card, from a digit not preceded by [\w-]: (?:\d[ -]?){13,18}\d(?![\w-]). Exact. */
static int card_at(const unsigned char *t, Py_ssize_t n, Py_ssize_t p)
{
    int digits = 0;
    for (Py_ssize_t q = p; is_digit(t, n, q);) {
        digits++;
        q++;
        if (digits >= 14 && (q == n || !(is_word(t[q]) || t[q] == '-')))
            return 1;
        if (digits == 19)
            return 0;
        if (q < n && (t[q] == ' ' || t[q] == '-'))
            q++; /* one separator, then a digit must follow */
    }
    return 0;
}

/* us_ssn, around its first dash at q: (?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-]). Exact. */
static int ssn_around(const unsigned char *t, Py_ssize_t n, Py_ssize_t q)
{
    static const char shape[] = "ddd-dd-dddd";
    Py_ssize_t p = q - 3;
    if (p < 0 || p + 11 > n)
        return 0;
    for (int k = 0; k < 11; k++)
        if (shape[k] == 'd' ? !is_digit(t, n, p + k) : t[p + k] != '-')
            return 0;
    return (p == 0 || !(is_digit(t, n, p - 1) || t[p - 1] == '-'))
        && (p + 11 == n || !(is_digit(t, n, p + 11) || t[p + 11] == '-'));
}

/* iban, from an upper-case letter at a word boundary: [A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2}
 * (the regex's further groups and closing \b left out: wider). */
static int iban_at(const unsigned char *t, Py_ssize_t n, Py_ssize_t p)
{
    if (!is_upper(t, n, p + 1) || !is_digit(t, n, p + 2) || !is_digit(t, n, p + 3))
        return 0;
    Py_ssize_t q = p + 4;
    for (int group = 0; group < 2; group++) {
        if (q < n && t[q] == ' ')
            q++;
        for (int k = 0; k < 4; k++, q++)
            if (!is_upper(t, n, q) && !is_digit(t, n, q))
                return 0;
    }
    return 1;
}

/* uk_nino, from an upper-case letter at a word boundary: [A-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b
 * (any two letters: wider than the regex's classes). */
static int nino_at(const unsigned char *t, Py_ssize_t n, Py_ssize_t p)
{
    if (!is_upper(t, n, p + 1))
        return 0;
    Py_ssize_t q = p + 2;
    for (int pair = 0; pair < 3; pair++, q += 2) {
        if (q < n && t[q] == ' ')
            q++;
        if (!is_digit(t, n, q) || !is_digit(t, n, q + 1))
            return 0;
    }
    if (q < n && t[q] == ' ')
        q++;
    if (q >= n || t[q] < 'A' || t[q] > 'D')
        return 0;
    return q + 1 == n || !is_word(t[q + 1]);
}

/* Where a shape may start, from the classes of a character and the one before it. */
enum { C_OTHER, C_DIGIT, C_UPPER, C_WORD, C_DASH, C_CLASSES };
static unsigned char char_class[256];
enum { START_CARD = 1, START_UPPER = 2 };
/* [a byte, and the one after it as the high byte]: which shape may start at the second. One
 * lookup per position, independent of the last (a chain of lookups from one byte to the next
 * makes each wait for the one before). */
static unsigned char pair_starts[65536];

static void init_shape_tables(void)
{
    for (int c = 0; c < 256; c++)
        char_class[c] = c >= '0' && c <= '9' ? C_DIGIT : c >= 'A' && c <= 'Z' ? C_UPPER
                      : (c >= 'a' && c <= 'z') || c == '_' ? C_WORD : c == '-' ? C_DASH : C_OTHER;
    /* A card: a digit not after [\w-]. An IBAN or NINO: an upper-case letter not after \w. */
    for (int before = 0; before < 256; before++)
        for (int c = 0; c < 256; c++) {
            int b = char_class[before], k = char_class[c];
            pair_starts[before | c << 8] = b == C_OTHER && k == C_DIGIT ? START_CARD
                : (b == C_OTHER || b == C_DASH) && k == C_UPPER ? START_UPPER : 0;
        }
}

static unsigned char start_at(const unsigned char *t, Py_ssize_t p)
{
    if (p == 0) /* the start of the text is a boundary */
        return pair_starts[' ' | t[0] << 8];
    uint16_t pair;
    memcpy(&pair, t + p - 1, 2);
#if PY_BIG_ENDIAN
    pair = (uint16_t)(pair >> 8 | pair << 8);
#endif
    return pair_starts[pair];
}

#ifdef __SSE2__
/* Bit k: a shape may start at t[at + k] (64 bytes from at): a digit not after [\w-], or an
 * upper-case letter not after \w. `before`: bit 0, whether t[at - 1] is a word character;
 * bit 1, whether it is a dash; updated for the next 64. Most 64-byte pieces of text have
 * few or none. */
static uint64_t starts_in_64(const unsigned char *t, Py_ssize_t at, unsigned int *before)
{
    uint64_t digit = 0, upper = 0, word = 0, dash = 0;
    for (int b = 0; b < 4; b++) {
        __m128i v = _mm_loadu_si128((const __m128i *)(t + at + 16 * b));
        __m128i d = IN(v, '0', '9'), u = IN(v, 'A', 'Z');
        __m128i w = _mm_or_si128(_mm_or_si128(d, u), _mm_or_si128(IN(v, 'a', 'z'), IS(v, '_')));
        int shift = 16 * b;
        digit |= (uint64_t)(unsigned int)_mm_movemask_epi8(d) << shift;
        upper |= (uint64_t)(unsigned int)_mm_movemask_epi8(u) << shift;
        word |= (uint64_t)(unsigned int)_mm_movemask_epi8(w) << shift;
        dash |= (uint64_t)(unsigned int)_mm_movemask_epi8(IS(v, '-')) << shift;
    }
    uint64_t word_before = word << 1 | (*before & 1), dash_before = dash << 1 | (*before >> 1 & 1);
    *before = (unsigned int)(word >> 63) | (unsigned int)(dash >> 63) << 1;
    return (digit & ~(word_before | dash_before)) | (upper & ~word_before);
}
#endif

/* The shapes that may start at p, added to found. */
static long shapes_at(const unsigned char *t, Py_ssize_t n, Py_ssize_t p, long found)
{
    unsigned char start = start_at(t, p);
    if (start == START_CARD && !(found & SHAPE_CARD) && card_at(t, n, p))
        found |= SHAPE_CARD;
    if (start == START_UPPER) {
        if (!(found & SHAPE_IBAN) && iban_at(t, n, p))
            found |= SHAPE_IBAN;
        if (!(found & SHAPE_NINO) && nino_at(t, n, p))
            found |= SHAPE_NINO;
    }
    return found;
}

static PyObject *shapes_of(const unsigned char *t, Py_ssize_t n)
{
    long found = 0;
    const long by_start = SHAPE_CARD | SHAPE_IBAN | SHAPE_NINO;
    Py_ssize_t p = 0;
#ifdef __SSE2__
    unsigned int before = 0; /* the start of the text is a boundary */
    for (; p + 64 <= n && found != by_start; p += 64)
        for (uint64_t bits = starts_in_64(t, p, &before); bits && found != by_start; bits &= bits - 1)
            found = shapes_at(t, n, p + __builtin_ctzll(bits), found);
#endif
    for (; p < n && found != by_start; p++)
        found = shapes_at(t, n, p, found);
    /* SSNs from their dashes: rarer than the digits they could start at (hex, base64). */
    for (const unsigned char *dash = memchr(t, '-', n); dash != NULL && !(found & SHAPE_SSN);
         dash = memchr(dash + 1, '-', n - (dash + 1 - t)))
        if (ssn_around(t, n, dash - t))
            found |= SHAPE_SSN;
    return PyLong_FromLong(found);
}

static PyObject *number_shapes(PyObject *module, PyObject *arg)
{
    return on_bytes(arg, shapes_of);
}

static PyObject *percent_decoded(PyObject *module, PyObject *args)
{
    Py_buffer view;
    int plus;
    if (!PyArg_ParseTuple(args, "y*p", &view, &plus))
        return NULL;
    const unsigned char *t = view.buf;
    Py_ssize_t n = view.len, out = 0;
    unsigned char *buf = PyMem_Malloc(n > 0 ? (size_t)n : 1);
    if (buf == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n;) {
        unsigned char c = t[i];
        if (c == '%' && i + 2 < n && hex_value[t[i + 1]] >= 0 && hex_value[t[i + 2]] >= 0) {
            buf[out++] = (unsigned char)(hex_value[t[i + 1]] << 4 | hex_value[t[i + 2]]);
            i += 3;
        } else {
            buf[out++] = plus && c == '+' ? ' ' : c;
            i++;
        }
    }
    PyObject *text = PyUnicode_DecodeUTF8((const char *)buf, out, "replace");
    PyMem_Free(buf);
    PyBuffer_Release(&view);
    return text;
}

static PyObject *entity_in(const unsigned char *t, Py_ssize_t n)
{
    int found = 0;
    for (const unsigned char *end = memchr(t, ';', n); end != NULL && !found; end = memchr(end + 1, ';', n - (end + 1 - t))) {
        /* The longest run of letters, of digits and of hex digits just before the ";": each
         * stops at the "&", "#" or "x" that must come before it. */
        Py_ssize_t at = end - t, j;
        for (j = at - 1; j >= 0 && ((t[j] | 0x20) >= 'a' && (t[j] | 0x20) <= 'z'); j--)
            ;
        found = j < at - 1 && j >= 0 && t[j] == '&';
        for (j = at - 1; !found && j >= 0 && t[j] >= '0' && t[j] <= '9'; j--)
            ;
        found = found || (j < at - 1 && j >= 1 && t[j] == '#' && t[j - 1] == '&');
        for (j = at - 1; !found && j >= 0 && hex_value[t[j]] >= 0; j--)
            ;
        found = found || (j < at - 1 && j >= 2 && t[j] == 'x' && t[j - 1] == '#' && t[j - 2] == '&');
    }
    return PyBool_FromLong(found);
}

static PyObject *has_entity(PyObject *module, PyObject *arg)
{
    return on_bytes(arg, entity_in);
}

static PyMethodDef methods[] = {
    {"encoded_layers", encoded_layers, METH_O,
     "encoded_layers(data: bytes) -> (base64_texts, hex_texts, separated_hex_possible)"},
    {"percent_decoded", percent_decoded, METH_VARARGS,
     "percent_decoded(data: bytes, plus: bool) -> str: urllib.parse.unquote(_plus) of ASCII text"},
    {"has_entity", has_entity, METH_O, "has_entity(data: bytes) -> bool: an HTML entity occurs in ASCII text"},
    {"number_shapes", number_shapes, METH_O,
     "number_shapes(data: bytes) -> int: a bit for each number detector that may match ASCII text"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "tollgate.dlp._native",
    "The native parts of a DLP inspection: encoded layers and number shapes.", -1, methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    init_tables();
    init_shape_tables();
    PyObject *m = PyModule_Create(&module);
    /* number_shapes' bits, by the names detectors give their shape (SHAPES["card"]). */
    PyObject *shapes = Py_BuildValue("{sisisisi}", "card", SHAPE_CARD, "ssn", SHAPE_SSN, "iban", SHAPE_IBAN,
                                     "nino", SHAPE_NINO);
    if (m == NULL || shapes == NULL || PyModule_AddObject(m, "SHAPES", shapes) < 0) {
        Py_XDECREF(shapes);
        Py_XDECREF(m);
        return NULL;
    }
    return m;
}
