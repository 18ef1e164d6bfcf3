/* problem.c - see problem.h. */
#include "problem.h"

#include <stdio.h>
#include <string.h>

#include "log.h"

int ev_problem_body(char *buf, size_t cap, int status, const char *title, const char *kind,
                    const char *detail, const char *members)
{
    char esc[512] = "";
    if (detail)
        ev_json_escape(esc, sizeof esc, detail, strlen(detail));
    int n = snprintf(
        buf, cap, "{\"type\":\"" EV_PROBLEM_BASE "%s\",\"title\":\"%s\",\"status\":%d%s%s%s%s%s}",
        kind, title, status, detail ? ",\"detail\":\"" : "", detail ? esc : "", detail ? "\"" : "",
        members ? "," : "", members ? members : "");
    return n < 0 || (size_t)n >= cap ? -1 : n;
}
