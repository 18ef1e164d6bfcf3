/* log.h - one logger for the whole process.
 *
 * Lines go to stderr as "<iso time> <level> [pid] message". The access log is a
 * separate stream of JSON lines (ev_log_access) so tools can parse it. */
#ifndef EV_LOG_H
#define EV_LOG_H

#include <stddef.h>
#include <stdint.h>

typedef enum { EV_LOG_DEBUG, EV_LOG_INFO, EV_LOG_WARN, EV_LOG_ERROR } ev_log_level_t;

void ev_log_set_level(ev_log_level_t level);
int ev_log_parse_level(const char *name, ev_log_level_t *out);
int ev_log_enabled(ev_log_level_t level);
/* One line from a call site (any stable value: ev_log uses the format
 * string's address); rate-limited per site, see log.c. */
void ev_log_site(ev_log_level_t level, uintptr_t site, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define ev_log(level, ...) ev_log_site((level), (uintptr_t)ev_log_first_(__VA_ARGS__, ""), __VA_ARGS__)
#define ev_log_first_(fmt, ...) (fmt)

#define ev_debug(...) do { if (ev_log_enabled(EV_LOG_DEBUG)) ev_log(EV_LOG_DEBUG, __VA_ARGS__); } while (0)
#define ev_info(...) ev_log(EV_LOG_INFO, __VA_ARGS__)
#define ev_warn(...) ev_log(EV_LOG_WARN, __VA_ARGS__)
#define ev_error(...) ev_log(EV_LOG_ERROR, __VA_ARGS__)

/* Appends s to buf as the body of a JSON string (no quotes); returns bytes
 * written, never more than cap - 1, always NUL-terminated. */
size_t ev_json_escape(char *buf, size_t cap, const char *s, size_t len);

#endif
