/* log.c - process-wide logger.
 *
 * Deliberately tiny: one level threshold, one write(2) per line so lines from
 * several workers sharing stderr never interleave mid-line.
 *
 * Repeats are rate-limited per call site (the format string in C, the source
 * line in Lua): at most SITE_BURST lines a second each; the rest are counted
 * and the next line from that site says how many were left out. Something a
 * client can trigger on every request can then cost a few lines a second,
 * never millions. Control characters in a message become spaces, so a
 * message cannot forge a line of its own. */
#include "log.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define SITES 64
#define SITE_BURST 10 /* lines per second per call site */

static ev_log_level_t threshold = EV_LOG_INFO;

typedef struct {
    uintptr_t key;
    time_t second;
    unsigned lines;      /* written in this second */
    unsigned long held;  /* left out since the last line written */
} site_t;
static site_t sites[SITES];

/* 1 when a line from this site may be written now; *held: lines left out
 * before it. A slot taken by another site simply starts afresh. */
static int site_admit(uintptr_t key, time_t now, unsigned long *held)
{
    site_t *st = &sites[(key ^ (key >> 7)) % SITES];
    if (st->key != key) {
        *st = (site_t){.key = key, .second = now};
    } else if (st->second != now) {
        st->second = now;
        st->lines = 0;
    }
    if (st->lines >= SITE_BURST) {
        st->held++;
        return 0;
    }
    st->lines++;
    *held = st->held;
    st->held = 0;
    return 1;
}
static const char *const names[] = {"debug", "info", "warn", "error"};

void ev_log_set_level(ev_log_level_t level) { threshold = level; }

int ev_log_enabled(ev_log_level_t level) { return level >= threshold; }

int ev_log_parse_level(const char *name, ev_log_level_t *out)
{
    for (int i = 0; i <= EV_LOG_ERROR; i++) {
        if (strcmp(name, names[i]) == 0) {
            *out = (ev_log_level_t)i;
            return 0;
        }
    }
    return -1;
}

void ev_log_site(ev_log_level_t level, uintptr_t site, const char *fmt, ...)
{
    if (level < threshold)
        return;
    char line[4096];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    unsigned long held = 0;
    if (!site_admit(site, tv.tv_sec, &held))
        return;
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s [%d] ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (int)(tv.tv_usec / 1000), names[level], (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    for (size_t i = (size_t)n; i < len; i++)
        if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
            line[i] = ' ';
    if (held) {
        int k = snprintf(line + len, sizeof line - len - 1, " (%lu more like this left out)", held);
        len += k > 0 ? (size_t)k : 0;
        if (len > sizeof line - 2)
            len = sizeof line - 2;
    }
    line[len++] = '\n';
    ssize_t ignored = write(STDERR_FILENO, line, len);
    (void)ignored;
}

size_t ev_json_escape(char *buf, size_t cap, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (cap == 0)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[7];
        size_t k = 0;
        if (c == '"' || c == '\\') {
            esc[k++] = '\\';
            esc[k++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            esc[k++] = '\\';
            esc[k++] = 'u';
            esc[k++] = '0';
            esc[k++] = '0';
            esc[k++] = hex[c >> 4];
            esc[k++] = hex[c & 15];
        } else {
            esc[k++] = (char)c;
        }
        if (o + k >= cap)
            break;
        memcpy(buf + o, esc, k);
        o += k;
    }
    buf[o] = '\0';
    return o;
}
