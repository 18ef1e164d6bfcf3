/* json.h - a strict RFC 8259 checker for JSON texts, and UTF-8 checks.
 * No Lua: evently.json (lua_json.c) and the early matcher (early.c) both
 * ask it whether a body is JSON before anything reads it. */
#ifndef EV_JSON_H
#define EV_JSON_H

#include <stddef.h>

/* Containers nested deeper than this are malformed (lua-cjson's default). */
#define EV_JSON_MAX_DEPTH 1000

typedef enum {
    EV_JSON_OK,        /* a JSON text, every value usable */
    EV_JSON_MALFORMED, /* not a JSON text: answered 400 */
    EV_JSON_INVALID,   /* grammatical, but a value cannot be taken: answered 422 */
} ev_json_status_t;

typedef struct {
    size_t offset;      /* byte offset (0-based) of the first problem */
    const char *reason; /* static text, e.g. "invalid number" */
} ev_json_error_t;

/* Called for each unusable value, in document order. path names it as a
 * client wrote it ("email", "queue.opens_at", "items[2]", "body" for the
 * whole text; keys as raw bytes); message says what is wrong ("must be
 * valid UTF-8"). Both are valid only during the call. May longjmp (Lua
 * OOM): the checker holds nothing that needs freeing. */
typedef void (*ev_json_invalid_fn)(void *ud, const char *path, const char *message);

/* Checks s[0..len). s[len] is never read. on_invalid may be NULL; err
 * (may be NULL) gets the first problem when the answer is not EV_JSON_OK.
 * MALFORMED wins over INVALID: on_invalid may have been called before the
 * text turned out malformed. */
ev_json_status_t ev_json_check(const char *s, size_t len, ev_json_invalid_fn on_invalid,
                               void *ud, ev_json_error_t *err);

/* The UTF-8 sequence at s[0..n) (n >= 1): its length (1..4) when well
 * formed (shortest form, no surrogates, <= U+10FFFF), else minus the length
 * of its maximal ill-formed subpart (Unicode 3.9, D93b), which is what one
 * U+FFFD replaces. */
int ev_json_utf8(const char *s, size_t n);

#endif
