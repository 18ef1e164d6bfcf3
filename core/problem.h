/* problem.h - the one way the C core writes an RFC 9457 problem document.
 *
 * Lua answers with evently.problem; C answers where no script runs (transport
 * errors, refusals at accept, a handler past its deadline, early answers).
 * Both spell a document the same way, so a client reads one shape:
 *   {"type":"https://evently.dev/problems/<kind>","title":...,"status":N
 *    [,"detail":...][,<members>]}
 * detail is escaped here; members are extra members already written as JSON
 * ("\"request_id\":\"ab12\""), or NULL. */
#ifndef EV_PROBLEM_H
#define EV_PROBLEM_H

#include <stddef.h>

#define EV_PROBLEM_BASE "https://evently.dev/problems/"

/* Writes the document into buf; its length, or -1 when it does not fit in cap. */
int ev_problem_body(char *buf, size_t cap, int status, const char *title, const char *kind,
                    const char *detail, const char *members);

#endif
