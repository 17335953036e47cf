// json.h: the JSON that requests and answers carry, with text as bytes and
// a length. cJSON keeps strings NUL-terminated, so a prompt "ab\u0000cd"
// would end at the zero byte; this reader keeps every string's length, and
// the writer escapes every byte (a NUL becomes \u0000). The reader is
// strict: one value and nothing after it but white space.
#ifndef GLIA_JSON_H
#define GLIA_JSON_H

#include <stddef.h>

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } JsonType;

typedef struct Json {
    JsonType type;
    int boolean;             // JSON_BOOL
    double number;           // JSON_NUMBER
    char *str;               // JSON_STRING: len bytes (any byte, NUL included), NUL-terminated as well
    int len;
    char *key;               // the member's name, inside an object (NUL-terminated; may hold NULs)
    int key_len;
    struct Json *child;      // first element or member
    struct Json *next;       // next sibling
} Json;

// Parses all of s[0..n): one value, then only white space. Returns the tree
// (json_free), or NULL with a one-line reason in err. Strings are the bytes
// they encode: escapes decoded (\u0000 is a zero byte, \uXXXX the character's
// UTF-8), other bytes taken as they are (a byte ≥ 0x80 stands for itself).
Json *json_parse(const char *s, size_t n, char *err, size_t err_len);
void json_free(Json *j);
// The member of object o named key (the last one if repeated), or NULL.
const Json *json_get(const Json *o, const char *key);
int json_count(const Json *arr);

// A JSON string literal (quotes included) for bytes s[0..len): valid UTF-8
// as it is, every invalid byte as U+FFFD, control bytes (NUL included) as
// \u00XX. Caller frees.
char *json_quote(const char *s, int len);

#endif
