// json.c: see json.h. A recursive-descent reader over a length-bounded
// buffer (depth limited, so a hostile body cannot exhaust the stack) and the
// string writer that escapes every byte.
#include "generate/json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "glia/util.h"

#define JSON_MAX_DEPTH 64

typedef struct {
    const char *s;
    size_t n, i;
    char *err;
    size_t err_len;
    int failed;
} Reader;

static int fail(Reader *r, const char *what) {
    if (!r->failed) snprintf(r->err, r->err_len, "request body is not valid JSON: %s at byte %zu", what, r->i);
    r->failed = 1;
    return -1;
}

static void skip_ws(Reader *r) {
    while (r->i < r->n && (r->s[r->i] == ' ' || r->s[r->i] == '\t' || r->s[r->i] == '\n' || r->s[r->i] == '\r')) r->i++;
}

static Json *value(Reader *r, int depth);

static int hex4(Reader *r, unsigned *out) {
    if (r->n - r->i < 4) return fail(r, "a short \\u escape");
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        char c = r->s[r->i + k];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return fail(r, "a bad \\u escape");
    }
    r->i += 4;
    *out = v;
    return 0;
}

static int put_utf8(char *o, unsigned cp) {
    if (cp < 0x80) return o[0] = (char)cp, 1;
    if (cp < 0x800) return o[0] = (char)(0xC0 | cp >> 6), o[1] = (char)(0x80 | (cp & 0x3F)), 2;
    if (cp < 0x10000)
        return o[0] = (char)(0xE0 | cp >> 12), o[1] = (char)(0x80 | (cp >> 6 & 0x3F)), o[2] = (char)(0x80 | (cp & 0x3F)), 3;
    o[0] = (char)(0xF0 | cp >> 18), o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3F)), o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

// A string starting at the opening quote; its bytes into *out (malloc'd), length *len.
static int string(Reader *r, char **out, int *len) {
    r->i++;  // "
    size_t start = r->i;
    while (r->i < r->n && r->s[r->i] != '"') r->i += r->s[r->i] == '\\' ? 2 : 1;
    if (r->i >= r->n) return fail(r, "an unterminated string");
    size_t end = r->i;
    if (end - start > (size_t)1 << 30) return fail(r, "a string over 1 GiB");
    char *o = xmalloc(end - start + 1);  // escapes only shrink
    int k = 0;
    for (r->i = start; r->i < end;) {
        unsigned char c = (unsigned char)r->s[r->i++];
        if (c < 0x20) {
            free(o);
            return fail(r, "a raw control character in a string (escape it)");
        }
        if (c != '\\') {
            o[k++] = (char)c;
            continue;
        }
        char e = r->s[r->i++];
        switch (e) {
            case '"': o[k++] = '"'; break;
            case '\\': o[k++] = '\\'; break;
            case '/': o[k++] = '/'; break;
            case 'b': o[k++] = '\b'; break;
            case 'f': o[k++] = '\f'; break;
            case 'n': o[k++] = '\n'; break;
            case 'r': o[k++] = '\r'; break;
            case 't': o[k++] = '\t'; break;
            case 'u': {
                unsigned cp, lo;
                if (hex4(r, &cp)) return free(o), -1;
                if (cp >= 0xDC00 && cp <= 0xDFFF) return free(o), fail(r, "a lone low surrogate");
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (r->i + 2 > end || r->s[r->i] != '\\' || r->s[r->i + 1] != 'u')
                        return free(o), fail(r, "a lone high surrogate");
                    r->i += 2;
                    if (hex4(r, &lo)) return free(o), -1;
                    if (lo < 0xDC00 || lo > 0xDFFF) return free(o), fail(r, "a high surrogate without its low half");
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                k += put_utf8(o + k, cp);
                break;
            }
            default: free(o); return fail(r, "an unknown escape");
        }
    }
    o[k] = 0;
    r->i = end + 1;
    *out = o;
    *len = k;
    return 0;
}

static Json *node(JsonType t) {
    Json *j = xcalloc(1, sizeof(Json));
    j->type = t;
    return j;
}

static Json *number(Reader *r) {
    size_t st = r->i;
    if (r->s[r->i] == '-') r->i++;
    if (r->i >= r->n || r->s[r->i] < '0' || r->s[r->i] > '9') return fail(r, "a bad number"), NULL;
    if (r->s[r->i] == '0') r->i++;
    else while (r->i < r->n && r->s[r->i] >= '0' && r->s[r->i] <= '9') r->i++;
    if (r->i < r->n && r->s[r->i] == '.') {
        r->i++;
        if (r->i >= r->n || r->s[r->i] < '0' || r->s[r->i] > '9') return fail(r, "a bad number"), NULL;
        while (r->i < r->n && r->s[r->i] >= '0' && r->s[r->i] <= '9') r->i++;
    }
    if (r->i < r->n && (r->s[r->i] == 'e' || r->s[r->i] == 'E')) {
        r->i++;
        if (r->i < r->n && (r->s[r->i] == '+' || r->s[r->i] == '-')) r->i++;
        if (r->i >= r->n || r->s[r->i] < '0' || r->s[r->i] > '9') return fail(r, "a bad number"), NULL;
        while (r->i < r->n && r->s[r->i] >= '0' && r->s[r->i] <= '9') r->i++;
    }
    char buf[64];
    size_t len = r->i - st;
    if (len >= sizeof buf) return fail(r, "a number over 63 characters"), NULL;
    memcpy(buf, r->s + st, len);
    buf[len] = 0;
    Json *j = node(JSON_NUMBER);
    j->number = strtod(buf, NULL);
    return j;
}

static int word(Reader *r, const char *w) {
    size_t k = strlen(w);
    if (r->n - r->i < k || memcmp(r->s + r->i, w, k)) return fail(r, "an unexpected character");
    r->i += k;
    return 0;
}

static Json *value(Reader *r, int depth) {
    skip_ws(r);
    if (r->i >= r->n) return fail(r, "the end of the body where a value was expected"), NULL;
    if (depth > JSON_MAX_DEPTH) return fail(r, "nesting deeper than 64"), NULL;
    char c = r->s[r->i];
    Json *j;
    if (c == '{' || c == '[') {
        int obj = c == '{';
        j = node(obj ? JSON_OBJECT : JSON_ARRAY);
        r->i++;
        skip_ws(r);
        Json **tail = &j->child;
        if (r->i < r->n && r->s[r->i] == (obj ? '}' : ']')) {
            r->i++;
            return j;
        }
        for (;;) {
            char *key = NULL;
            int key_len = 0;
            if (obj) {
                skip_ws(r);
                if (r->i >= r->n || r->s[r->i] != '"') return fail(r, "a member name expected"), json_free(j), NULL;
                if (string(r, &key, &key_len)) return json_free(j), NULL;
                skip_ws(r);
                if (r->i >= r->n || r->s[r->i] != ':') return free(key), fail(r, "':' expected"), json_free(j), NULL;
                r->i++;
            }
            Json *v = value(r, depth + 1);
            if (!v) return free(key), json_free(j), NULL;
            v->key = key, v->key_len = key_len;
            *tail = v;
            tail = &v->next;
            skip_ws(r);
            if (r->i < r->n && r->s[r->i] == ',') {
                r->i++;
                continue;
            }
            if (r->i < r->n && r->s[r->i] == (obj ? '}' : ']')) {
                r->i++;
                return j;
            }
            return fail(r, obj ? "',' or '}' expected" : "',' or ']' expected"), json_free(j), NULL;
        }
    }
    if (c == '"') {
        j = node(JSON_STRING);
        if (string(r, &j->str, &j->len)) return json_free(j), NULL;
        return j;
    }
    if (c == 't' || c == 'f') {
        j = node(JSON_BOOL);
        j->boolean = c == 't';
        if (word(r, c == 't' ? "true" : "false")) return json_free(j), NULL;
        return j;
    }
    if (c == 'n') {
        if (word(r, "null")) return NULL;
        return node(JSON_NULL);
    }
    return number(r);
}

Json *json_parse(const char *s, size_t n, char *err, size_t err_len) {
    Reader r = {s ? s : "", s ? n : 0, 0, err, err_len, 0};
    Json *j = value(&r, 0);
    if (!j) return NULL;
    skip_ws(&r);
    if (r.i < r.n) {
        json_free(j);
        snprintf(err, err_len, "request body has data after the JSON value (at byte %zu of %zu)", r.i, r.n);
        return NULL;
    }
    return j;
}

void json_free(Json *j) {
    while (j) {
        Json *next = j->next;
        json_free(j->child);
        free(j->str);
        free(j->key);
        free(j);
        j = next;
    }
}

const Json *json_get(const Json *o, const char *key) {
    if (!o || o->type != JSON_OBJECT) return NULL;
    const Json *found = NULL;
    size_t k = strlen(key);
    for (const Json *c = o->child; c; c = c->next)
        if ((size_t)c->key_len == k && !memcmp(c->key, key, k)) found = c;
    return found;
}

int json_count(const Json *a) {
    int n = 0;
    for (const Json *c = a ? a->child : NULL; c; c = c->next) n++;
    return n;
}

// Length of the valid UTF-8 sequence at u[i] (no overlongs, no surrogates), or 0.
static int utf8_seq(const unsigned char *u, int i, int len) {
    unsigned char b = u[i];
    int need = b < 0x80 ? 1 : b >= 0xC2 && b < 0xE0 ? 2 : b >= 0xE0 && b < 0xF0 ? 3 : b >= 0xF0 && b < 0xF5 ? 4 : 0;
    if (!need || i + need > len) return 0;
    for (int k = 1; k < need; k++)
        if ((u[i + k] & 0xC0) != 0x80) return 0;
    if (need == 3) {
        unsigned cp = (b & 0x0Fu) << 12 | (u[i + 1] & 0x3Fu) << 6;
        if (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    }
    if (need == 4) {
        unsigned cp = (b & 0x07u) << 18 | (u[i + 1] & 0x3Fu) << 12;
        if (cp < 0x10000 || cp > 0x10FFFF) return 0;
    }
    return need;
}

char *json_quote(const char *s, int len) {
    char *o = xmalloc((size_t)len * 6 + 3), *p = o;
    const unsigned char *u = (const unsigned char *)s;
    *p++ = '"';
    for (int i = 0; i < len;) {
        unsigned char b = u[i];
        if (b == '"' || b == '\\') {
            *p++ = '\\', *p++ = (char)b, i++;
        } else if (b == '\n') {
            *p++ = '\\', *p++ = 'n', i++;
        } else if (b == '\t') {
            *p++ = '\\', *p++ = 't', i++;
        } else if (b == '\r') {
            *p++ = '\\', *p++ = 'r', i++;
        } else if (b < 0x20 || b == 0x7F) {
            p += sprintf(p, "\\u%04x", b), i++;
        } else {
            int k = utf8_seq(u, i, len);
            if (k) {
                memcpy(p, u + i, (size_t)k);
                p += k, i += k;
            } else {
                memcpy(p, "\xEF\xBF\xBD", 3);
                p += 3, i++;
            }
        }
    }
    *p++ = '"';
    *p = 0;
    return o;
}
