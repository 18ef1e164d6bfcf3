/* embedded.c - private Postgres and Redis under $EVENTLY_HOME; see embedded.h.
 *
 * Layout, all derived from the absolute home so any process can find it again:
 *   $home/pg                  cluster data dir (0700)
 *   $home/run                 unix sockets: .s.PGSQL.5432, redis.sock, redis.pid
 *   $home/log/postgres.log    initdb, pg_ctl and server output
 *   $home/log/redis.log
 *   $home/redis               Redis working dir
 *   $home/embedded.lock       flock held while starting
 * A unix socket path must fit sun_path (108 bytes), so when
 * "$home/run/.s.PGSQL.5432" would pass SOCK_MAX the run dir moves to
 * /tmp/evently-<first 12 hex of sha256(home)>: still one per home, so two
 * homes never share sockets and servers for different homes run side by side.
 *
 * ev_embedded_start(): make the layout, take the start lock (so two evently
 * processes starting on one home do not both initdb or both start), then per
 * server: probe the socket; answering means reuse, else start it and wait.
 * ev_embedded_stop(): Redis first (SIGTERM, then SIGKILL after 5 s), then
 * `pg_ctl stop -m fast`, each only if this process started it.
 *
 * Postgres refuses to run as root, so as root every child (initdb, pg_ctl,
 * redis-server) runs as the system user "evently", created on first use, and
 * the layout is chown'ed to it. Children are forked and drop privileges
 * themselves (setgroups, setgid, setuid) rather than going through su, whose
 * behaviour differs between distributions.
 *
 * Extending: another server follows the Redis shape: a probe that answers
 * "running", a start that spawns as the run user and waits for the probe, a
 * stop guarded by a started_* flag. */
#define _GNU_SOURCE
#include "embedded.h"

/* Everything Evently keeps in Redis may be evicted at any time (Postgres is
 * the truth): under memory pressure the least recently used key goes. */
#define EMBEDDED_REDIS_MAXMEMORY "256mb"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libpq-fe.h>
#include <limits.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define RUN_USER         "evently"
#define PG_PORT          "5432"
#define PG_SOCK_NAME     ".s.PGSQL." PG_PORT
#define SOCK_MAX         100  /* sun_path is 108 bytes; keep a margin */
#define PG_START_TIMEOUT "60" /* seconds, pg_ctl -t */
#define REDIS_START_MS   10000
#define REDIS_STOP_MS    5000
#define PROBE_WAIT_MS    60000 /* a postmaster starting up or shutting down */
#define STD_PATH         "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* Who the children run as. drop == 0: as this process. */
typedef struct {
    int drop;
    uid_t uid;
    gid_t gid;
    gid_t groups[64]; /* resolved before fork: initgroups is unsafe after it */
    int ngroups;
} runas_t;

typedef struct {
    runas_t ru;
    char home[PATH_MAX];
    char run[PATH_MAX];
    char pg[PATH_MAX];
    char log_dir[PATH_MAX];
    char pg_log[PATH_MAX];
    char redis_dir[PATH_MAX];
    char redis_log[PATH_MAX];
    char redis_sock[PATH_MAX];
} layout_t;

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static int join(char *buf, size_t len, const char *dir, const char *name)
{
    int n = snprintf(buf, len, "%s/%s", dir, name);
    return n < 0 || (size_t)n >= len ? -1 : 0;
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int mkdir_p(const char *path, mode_t mode)
{
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return errno = ENAMETOOLONG, -1;
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        if (mkdir(buf, mode) != 0 && errno != EEXIST)
            return -1;
        if (c == '\0')
            return 0;
        *p = c;
    }
}

static off_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : 0;
}

/* pg_ctl's closing words, which say no more than its exit status does */
static int boilerplate(const char *line)
{
    return strcmp(line, "pg_ctl: could not start server") == 0 ||
           strcmp(line, "Examine the log output.") == 0;
}

/* The last n lines a child appended to a log (from offset on), joined with
 * " | ", so an error names its cause without the reader opening the file. */
static void log_tail(const char *path, off_t from, int n, char *out, size_t len)
{
    char buf[4096], *last[8]; /* a ring of the last lines kept */
    int count = 0;
    ssize_t got = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    snprintf(out, len, "no output");
    if (fd < 0)
        return;
    off_t size = lseek(fd, 0, SEEK_END);
    if (size - from > (off_t)sizeof buf - 1)
        from = size - (off_t)sizeof buf + 1;
    if (size > from)
        got = pread(fd, buf, (size_t)(size - from), from);
    close(fd);
    if (got <= 0)
        return;
    buf[got] = '\0';
    if (n > 8)
        n = 8;
    for (char *save = NULL, *p = strtok_r(buf, "\r\n", &save); p;
         p = strtok_r(NULL, "\r\n", &save)) {
        p += strspn(p, " ");
        if (*p && !boilerplate(p))
            last[count++ % 8] = p;
    }
    size_t o = 0;
    for (int i = count > n ? count - n : 0; i < count && o < len; i++)
        o += (size_t)snprintf(out + o, len - o, "%s%s", o ? " | " : "", last[i % 8]);
}

static int find_in_path(const char *name, char *out, size_t len)
{
    const char *lists[] = {getenv("PATH"), STD_PATH};
    for (int i = 0; i < 2; i++) {
        const char *p = lists[i];
        while (p && *p) {
            size_t n = strcspn(p, ":");
            if (n > 0 && snprintf(out, len, "%.*s/%s", (int)n, p, name) < (int)len &&
                access(out, X_OK) == 0)
                return 0;
            p += n + (p[n] == ':');
        }
    }
    return -1;
}

static void describe_status(int status, char *buf, size_t len)
{
    if (WIFEXITED(status))
        snprintf(buf, len, "exit %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "signal %d", WTERMSIG(status));
    else
        snprintf(buf, len, "status %d", status);
}

/* ---- children ---------------------------------------------------------- */

static int drop_privileges(const runas_t *ru)
{
    if (!ru->drop)
        return 0;
    if (setgroups((size_t)ru->ngroups, ru->groups) != 0 || setgid(ru->gid) != 0 ||
        setuid(ru->uid) != 0)
        return -1;
    return 0;
}

static void say(const char *s)
{
    ssize_t ignored = write(STDERR_FILENO, s, strlen(s));
    (void)ignored;
}

/* Runs in the forked child: only async-signal-safe calls until execv. The
 * child must not inherit this process's blocked or ignored signals (a server
 * that ignores SIGTERM cannot be stopped) nor its descriptors (a postmaster
 * holding our listening socket or start lock would hold them forever). */
static void child_exec(const runas_t *ru, char *const argv[], const char *out, int detach)
{
    sigset_t none;
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; s++)
        sigaction(s, &dfl, NULL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* Own session: a Ctrl-C to the terminal must not kill the server before
     * evently stops it in order. */
    if (detach)
        setsid();
    if (drop_privileges(ru) != 0) {
        say("evently: cannot switch to user " RUN_USER "\n");
        _exit(126);
    }
    int in = open("/dev/null", O_RDONLY);
    if (in >= 0)
        dup2(in, STDIN_FILENO);
    /* Opened after the switch, so the log belongs to the user who keeps
     * appending to it (pg_ctl -l reopens it as that user). */
    int fd = out ? open(out, O_WRONLY | O_APPEND | O_CREAT, 0644) : -1;
    if (fd < 0 && out)
        fd = open("/dev/null", O_WRONLY);
    if (fd >= 0) {
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
    } else {
        dup2(STDERR_FILENO, STDOUT_FILENO);
    }
    if (chdir("/") != 0)
        say("evently: chdir / failed\n");
    close_range(3, ~0U, 0);
    /* Not our environment: it holds EVENTLY_SECRET_KEY, Kafka and SMTP
     * passwords, which a server (or any SQL superuser, through
     * pg_read_file('/proc/self/environ')) must not see. */
    static char *const clean_env[] = {"PATH=" STD_PATH, "LANG=C", NULL};
    execve(argv[0], argv, clean_env);
    say("evently: cannot execute ");
    say(argv[0]);
    say("\n");
    _exit(127);
}

/* Output goes to out (appended), or to our stderr when out is NULL. */
static pid_t spawn(const runas_t *ru, char *const argv[], const char *out, int detach)
{
    pid_t pid = fork();
    if (pid == 0)
        child_exec(ru, argv, out, detach);
    return pid;
}

static int wait_child(pid_t pid, int *status)
{
    while (waitpid(pid, status, 0) < 0) {
        if (errno != EINTR)
            return -1;
    }
    return 0;
}

/* Runs a command to completion: "<what> failed (exit 1): <log tail>". */
static int run(const runas_t *ru, char *const argv[], const char *out, const char *what, char *err,
               size_t errlen)
{
    int status = 0;
    char how[32], tail[512];
    off_t from = out ? file_size(out) : 0;
    pid_t pid = spawn(ru, argv, out, 0);
    if (pid < 0)
        return fail(err, errlen, "%s: fork failed: %s", what, strerror(errno));
    if (wait_child(pid, &status) != 0)
        return fail(err, errlen, "%s: waitpid failed: %s", what, strerror(errno));
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;
    describe_status(status, how, sizeof how);
    if (!out)
        return fail(err, errlen, "%s failed (%s)", what, how);
    log_tail(out, from, 3, tail, sizeof tail);
    return fail(err, errlen, "%s failed (%s): %s (see %s)", what, how, tail, out);
}

/* ---- the run user ------------------------------------------------------ */

static int lookup_user(runas_t *ru)
{
    struct passwd *pw = getpwnam(RUN_USER);
    if (!pw)
        return -1;
    ru->drop = 1;
    ru->uid = pw->pw_uid;
    ru->gid = pw->pw_gid;
    ru->ngroups = (int)(sizeof ru->groups / sizeof ru->groups[0]);
    if (getgrouplist(RUN_USER, ru->gid, ru->groups, &ru->ngroups) < 0) {
        ru->groups[0] = ru->gid;
        ru->ngroups = 1;
    }
    return 0;
}

/* As root: the "evently" user, created if missing. Otherwise: ourselves. */
static int resolve_user(runas_t *ru, char *err, size_t errlen)
{
    char useradd[PATH_MAX];
    memset(ru, 0, sizeof *ru);
    if (geteuid() != 0 || lookup_user(ru) == 0)
        return 0;
    if (find_in_path("useradd", useradd, sizeof useradd) != 0)
        return fail(err, errlen,
                    "running as root and user %s does not exist; create it "
                    "(useradd is not installed)",
                    RUN_USER);
    char *argv[] = {useradd,  "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    RUN_USER, NULL};
    /* A failure is fine if a concurrent evently created the user first. */
    int rc = run(ru, argv, NULL, "useradd " RUN_USER, err, errlen);
    if (lookup_user(ru) != 0)
        return rc != 0 ? -1
                       : fail(err, errlen, "useradd %s succeeded but the user cannot be found",
                              RUN_USER);
    ev_info("created system user %s to run the embedded servers (postgres refuses root)", RUN_USER);
    return 0;
}

/* chown -R without following symlinks; files vanishing under a running
 * server are fine. */
static int chown_tree(int at, const char *name, uid_t uid, gid_t gid)
{
    struct stat st;
    if (fstatat(at, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
        return errno == ENOENT ? 0 : -1;
    if ((st.st_uid != uid || st.st_gid != gid) &&
        fchownat(at, name, uid, gid, AT_SYMLINK_NOFOLLOW) != 0 && errno != ENOENT)
        return -1;
    if (!S_ISDIR(st.st_mode))
        return 0;
    int fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -1;
    }
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            rc = chown_tree(dirfd(d), de->d_name, uid, gid);
    }
    closedir(d);
    return rc;
}

/* Every ancestor of home must be searchable by the run user, or postgres
 * cannot reach its data dir. Checked as that user (access() as root always
 * succeeds), in a child that reports the depth of the first failure. */
static int check_traversable(const runas_t *ru, const char *home, char *err, size_t errlen)
{
    int status = 0;
    pid_t pid = fork();
    if (pid == 0) {
        char path[PATH_MAX];
        int depth = 0;
        if (drop_privileges(ru) != 0)
            _exit(255);
        for (size_t i = 1;; i++) {
            if (home[i] != '/' && home[i] != '\0')
                continue;
            memcpy(path, home, i);
            path[i] = '\0';
            if (depth < 254)
                depth++;
            if (access(path, X_OK) != 0)
                _exit(depth);
            if (home[i] == '\0')
                _exit(0);
        }
    }
    if (pid < 0 || wait_child(pid, &status) != 0 || !WIFEXITED(status))
        return fail(err, errlen, "cannot check access to %s as user %s", home, RUN_USER);
    int depth = WEXITSTATUS(status);
    if (depth == 0)
        return 0;
    if (depth == 255)
        return fail(err, errlen, "cannot switch to user %s", RUN_USER);
    size_t i = 1;
    for (int k = 1; home[i]; i++)
        if (home[i] == '/' && k++ == depth)
            break;
    return fail(err, errlen,
                "directory %.*s is not traversable by user %s, which runs the "
                "embedded servers; run chmod o+x on it or choose another EVENTLY_HOME",
                (int)i, home, RUN_USER);
}

/* ---- layout ------------------------------------------------------------ */

static int choose_run_dir(layout_t *l)
{
    if (strlen(l->home) + strlen("/run/" PG_SOCK_NAME) <= SOCK_MAX)
        return join(l->run, sizeof l->run, l->home, "run");
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(l->home, strlen(l->home), md, &mdlen, EVP_sha256(), NULL))
        return -1;
    snprintf(l->run, sizeof l->run, "/tmp/evently-%02x%02x%02x%02x%02x%02x", md[0], md[1], md[2],
             md[3], md[4], md[5]);
    return 0;
}

static int layout_init(layout_t *l, const char *home)
{
    if (snprintf(l->home, sizeof l->home, "%s", home) >= (int)sizeof l->home ||
        choose_run_dir(l) != 0 || join(l->pg, sizeof l->pg, l->home, "pg") != 0 ||
        join(l->log_dir, sizeof l->log_dir, l->home, "log") != 0 ||
        join(l->pg_log, sizeof l->pg_log, l->log_dir, "postgres.log") != 0 ||
        join(l->redis_log, sizeof l->redis_log, l->log_dir, "redis.log") != 0 ||
        join(l->redis_dir, sizeof l->redis_dir, l->home, "redis") != 0 ||
        join(l->redis_sock, sizeof l->redis_sock, l->run, "redis.sock") != 0)
        return -1;
    return 0;
}

/* The sockets' directory is the servers' only door: Postgres trusts whoever
 * reaches its socket (a superuser login, COPY ... PROGRAM) and Redis holds the
 * cache, so only their user (and root) may enter it: 0700. A /tmp run dir
 * sits in a shared directory: refuse one somebody else made (a planted
 * symlink or directory would receive our sockets). */
static int make_run_dir(const layout_t *l, char *err, size_t errlen)
{
    struct stat st;
    int shared = strncmp(l->run, l->home, strlen(l->home)) != 0;
    if (mkdir(l->run, 0700) != 0 && errno != EEXIST)
        return fail(err, errlen, "cannot create %s: %s", l->run, strerror(errno));
    if (lstat(l->run, &st) != 0 || !S_ISDIR(st.st_mode))
        return fail(err, errlen, "%s exists and is not a directory", l->run);
    if (shared && st.st_uid != geteuid() && !(l->ru.drop && st.st_uid == l->ru.uid))
        return fail(err, errlen, "%s belongs to uid %d, not to evently; remove it", l->run,
                    (int)st.st_uid);
    /* a home made by an older evently has a 0755 run dir: close it too */
    if (chmod(l->run, 0700) != 0)
        return fail(err, errlen, "chmod %s: %s", l->run, strerror(errno));
    return 0;
}

static int make_dirs(const layout_t *l, char *err, size_t errlen)
{
    const char *dirs[] = {l->log_dir, l->redis_dir, l->pg};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        if (mkdir(dirs[i], 0755) != 0 && errno != EEXIST)
            return fail(err, errlen, "cannot create %s: %s", dirs[i], strerror(errno));
    }
    /* postgres refuses a data dir others can read */
    if (chmod(l->pg, 0700) != 0)
        return fail(err, errlen, "chmod %s: %s", l->pg, strerror(errno));
    if (make_run_dir(l, err, errlen) != 0)
        return -1;
    if (!l->ru.drop)
        return 0;
    const char *owned[] = {l->pg, l->run, l->log_dir, l->redis_dir};
    for (size_t i = 0; i < sizeof owned / sizeof owned[0]; i++) {
        if (chown_tree(AT_FDCWD, owned[i], l->ru.uid, l->ru.gid) != 0)
            return fail(err, errlen, "chown -R %s %s: %s", RUN_USER, owned[i], strerror(errno));
    }
    struct stat st;
    if (stat(l->home, &st) != 0 || chmod(l->home, (st.st_mode & 07777) | S_IXOTH) != 0)
        return fail(err, errlen, "chmod o+x %s: %s", l->home, strerror(errno));
    return check_traversable(&l->ru, l->home, err, errlen);
}

/* mkdir -p, realpath, layout, run user, directories. */
static int setup(layout_t *l, ev_embedded_t *e, const char *home, char *err, size_t errlen)
{
    char abs[PATH_MAX];
    if (!home || !*home)
        return fail(err, errlen, "EVENTLY_HOME is empty");
    if (mkdir_p(home, 0755) != 0)
        return fail(err, errlen, "cannot create %s: %s", home, strerror(errno));
    if (!realpath(home, abs))
        return fail(err, errlen, "cannot resolve %s: %s", home, strerror(errno));
    if (layout_init(l, abs) != 0)
        return fail(err, errlen, "EVENTLY_HOME path too long: %s", abs);
    if (resolve_user(&l->ru, err, errlen) != 0)
        return -1;
    e->home = strdup(l->home);
    e->run_dir = strdup(l->run);
    if (!e->home || !e->run_dir)
        return fail(err, errlen, "out of memory");
    return make_dirs(l, err, errlen);
}

/* ---- Postgres ---------------------------------------------------------- */

/* conninfo for the cluster; the socket dir is quoted when it needs it. */
static void pg_conninfo(char *buf, size_t len, const char *run, const char *db, int timeout)
{
    char host[PATH_MAX * 2 + 3];
    size_t o = 0;
    int quote = run[strcspn(run, " '\\")] != '\0';
    if (quote)
        host[o++] = '\'';
    for (const char *p = run; *p && o < sizeof host - 3; p++) {
        if (quote && (*p == '\'' || *p == '\\'))
            host[o++] = '\\';
        host[o++] = *p;
    }
    if (quote)
        host[o++] = '\'';
    host[o] = '\0';
    snprintf(buf, len, "host=%s port=" PG_PORT " dbname=%s user=" RUN_USER "%s", host, db,
             timeout ? " connect_timeout=5" : "");
}

/* Debian keeps server binaries outside PATH, one directory per major
 * version; the cluster's PG_VERSION names the one that can open it. */
static int pg_bindir(const char *pgdata, char *out, size_t len, char *err, size_t errlen)
{
    char path[PATH_MAX], ver[16] = "";
    FILE *f = join(path, sizeof path, pgdata, "PG_VERSION") == 0 ? fopen(path, "re") : NULL;
    if (f) {
        if (!fgets(ver, sizeof ver, f))
            ver[0] = '\0';
        ver[strcspn(ver, "\r\n")] = '\0';
        fclose(f);
    }
    if (ver[0] && snprintf(out, len, "/usr/lib/postgresql/%s/bin", ver) < (int)len &&
        join(path, sizeof path, out, "pg_ctl") == 0 && access(path, X_OK) == 0)
        return 0;
    if (find_in_path("pg_ctl", out, len) == 0) {
        *strrchr(out, '/') = '\0';
        return 0;
    }
    int best = -1;
    DIR *d = opendir("/usr/lib/postgresql");
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        int v = atoi(de->d_name);
        if (v > best &&
            snprintf(path, sizeof path, "/usr/lib/postgresql/%s/bin/pg_ctl", de->d_name) <
                (int)sizeof path &&
            access(path, X_OK) == 0)
            best = v;
    }
    if (d)
        closedir(d);
    if (best >= 0 && snprintf(out, len, "/usr/lib/postgresql/%d/bin", best) < (int)len)
        return 0;
    return fail(err, errlen,
                "PostgreSQL server binaries not found (install postgresql; "
                "looked in PATH and /usr/lib/postgresql/*/bin)");
}

/* PQping, waiting out a postmaster that is starting up or shutting down
 * (PQPING_REJECT) until it settles either way. */
static PGPing pg_probe(const layout_t *l)
{
    char ci[PATH_MAX * 3];
    pg_conninfo(ci, sizeof ci, l->run, "postgres", 1);
    long deadline = now_ms() + PROBE_WAIT_MS;
    PGPing p;
    while ((p = PQping(ci)) == PQPING_REJECT && now_ms() < deadline)
        sleep_ms(200);
    return p;
}

static int write_pg_conf(const layout_t *l, char *err, size_t errlen)
{
    char path[PATH_MAX];
    FILE *f = NULL;
    if (join(path, sizeof path, l->pg, "evently.conf") != 0 || !(f = fopen(path, "we")))
        return fail(err, errlen, "cannot write %s/evently.conf: %s", l->pg, strerror(errno));
    fputs("# Written by evently at every start; edits are lost. Override with\n"
          "# ALTER SYSTEM (postgresql.auto.conf is read after this file).\n"
          "listen_addresses = ''\nunix_socket_directories = '",
          f);
    for (const char *p = l->run; *p; p++) {
        if (*p == '\'')
            fputc('\'', f); /* quotes double inside a conf string */
        fputc(*p, f);
    }
    /* the directory is 0700 already; the socket itself says the same */
    fputs("'\nunix_socket_permissions = 0700\nport = " PG_PORT
          "\nmax_connections = 200\nshared_buffers = 128MB\nfsync = on\n",
          f);
    if (fclose(f) != 0)
        return fail(err, errlen, "cannot write %s: %s", path, strerror(errno));
    if (l->ru.drop && chown(path, l->ru.uid, l->ru.gid) != 0)
        return fail(err, errlen, "chown %s: %s", path, strerror(errno));
    return 0;
}

/* Writes path (in the data dir) whole, owned by the run user. */
static int write_pg_file(const layout_t *l, const char *name, const char *text, char *err,
                         size_t errlen)
{
    char path[PATH_MAX];
    FILE *f = NULL;
    if (join(path, sizeof path, l->pg, name) != 0 || !(f = fopen(path, "we")))
        return fail(err, errlen, "cannot write %s/%s: %s", l->pg, name, strerror(errno));
    fputs(text, f);
    if (fclose(f) != 0)
        return fail(err, errlen, "cannot write %s: %s", path, strerror(errno));
    if (l->ru.drop && chown(path, l->ru.uid, l->ru.gid) != 0)
        return fail(err, errlen, "chown %s: %s", path, strerror(errno));
    return 0;
}

/* Who may log in, rewritten at every start: nobody is trusted. Peer
 * authentication over the socket (the only way in: listen_addresses is
 * empty) lets the servers' own account and root in as role evently, through
 * the map "evently"; any other account is refused even if it reached the
 * socket, which the 0700 directory already prevents. */
static int write_pg_auth(const layout_t *l, char *err, size_t errlen)
{
    static const char hba[] = "# Written by evently at every start; edits are lost.\n"
                              "# TYPE DATABASE USER METHOD\n"
                              "local all all peer map=evently\n";
    char ident[512];
    const struct passwd *pw = l->ru.drop ? NULL : getpwuid(geteuid());
    const char *self = l->ru.drop ? RUN_USER : pw ? pw->pw_name : RUN_USER;
    snprintf(ident, sizeof ident,
             "# Written by evently at every start; edits are lost.\n"
             "# MAPNAME SYSTEM-USERNAME PG-USERNAME\n"
             "evently root " RUN_USER "\n"
             "evently %s " RUN_USER "\n",
             self);
    if (write_pg_file(l, "pg_hba.conf", hba, err, errlen) != 0)
        return -1;
    return write_pg_file(l, "pg_ident.conf", ident, err, errlen);
}

/* Appends the include to postgresql.conf once; last setting wins, so ours
 * beat initdb's defaults. */
static int include_pg_conf(const layout_t *l, char *err, size_t errlen)
{
    static const char line[] = "include 'evently.conf'\n";
    char path[PATH_MAX], buf[512];
    int found = 0;
    FILE *f = join(path, sizeof path, l->pg, "postgresql.conf") == 0 ? fopen(path, "re") : NULL;
    if (!f)
        return fail(err, errlen, "cannot read %s/postgresql.conf: %s", l->pg, strerror(errno));
    while (!found && fgets(buf, sizeof buf, f))
        found = strcmp(buf, line) == 0;
    fclose(f);
    if (found)
        return 0;
    if (!(f = fopen(path, "ae")))
        return fail(err, errlen, "cannot append to %s: %s", path, strerror(errno));
    fprintf(f, "\n# evently: embedded-server settings\n%s", line);
    return fclose(f) == 0 ? 0 : fail(err, errlen, "cannot write %s: %s", path, strerror(errno));
}

/* A crashed postmaster leaves postmaster.pid behind. Postgres ignores it when
 * that pid is dead, but in containers the pid is often reused by an unrelated
 * live process and postgres then refuses to start. The postmaster chdirs to
 * its data dir, so a live pid whose cwd is elsewhere is not ours. */
static void clear_stale_pid(const layout_t *l)
{
    char path[PATH_MAX], link[64], cwd[PATH_MAX];
    int pid = 0;
    FILE *f = join(path, sizeof path, l->pg, "postmaster.pid") == 0 ? fopen(path, "re") : NULL;
    if (!f)
        return;
    if (fscanf(f, "%d", &pid) != 1)
        pid = 0;
    fclose(f);
    if (pid <= 0 || (kill(pid, 0) != 0 && errno == ESRCH))
        return;
    snprintf(link, sizeof link, "/proc/%d/cwd", pid);
    ssize_t n = readlink(link, cwd, sizeof cwd - 1);
    if (n < 0 && errno == ENOENT)
        return; /* no /proc: cannot tell, let postgres decide */
    if (n >= 0 && (size_t)n == strlen(l->pg) && memcmp(cwd, l->pg, (size_t)n) == 0)
        return;
    ev_warn("removing stale %s (pid %d is not this cluster's postmaster)", path, pid);
    unlink(path);
}

static int pg_initdb(const layout_t *l, const char *bindir, char *err, size_t errlen)
{
    char prog[PATH_MAX], pg[PATH_MAX];
    snprintf(pg, sizeof pg, "%s", l->pg);
    if (join(prog, sizeof prog, bindir, "initdb") != 0)
        return fail(err, errlen, "path too long: %s", bindir);
    ev_info("initializing PostgreSQL cluster in %s", l->pg);
    /* peer from the start; write_pg_auth() adds the map before the first start */
    char *argv[] = {prog,          "-D", pg,     "-U",          RUN_USER,
                    "--auth=peer", "-E", "UTF8", "--no-locale", NULL};
    return run(&l->ru, argv, l->pg_log, "initdb", err, errlen);
}

static int pg_ctl_start(const layout_t *l, const char *bindir, char *err, size_t errlen)
{
    char prog[PATH_MAX], pg[PATH_MAX], log[PATH_MAX];
    snprintf(pg, sizeof pg, "%s", l->pg);
    snprintf(log, sizeof log, "%s", l->pg_log);
    if (join(prog, sizeof prog, bindir, "pg_ctl") != 0)
        return fail(err, errlen, "path too long: %s", bindir);
    /* -s: pg_ctl's progress dots would end up in an error's log tail */
    char *argv[] = {prog, "-D", pg, "-l", log, "-s", "-w", "-t", PG_START_TIMEOUT, "start", NULL};
    return run(&l->ru, argv, l->pg_log, "PostgreSQL start (pg_ctl)", err, errlen);
}

static int pq_fail(PGconn *conn, const char *what, char *err, size_t errlen)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s", PQerrorMessage(conn));
    msg[strcspn(msg, "\n")] = '\0';
    return fail(err, errlen, "%s: %s", what, msg);
}

/* CREATE DATABASE has no IF NOT EXISTS; a concurrent creator (another
 * instance on a reused cluster) shows up as 42P04 or a unique violation. */
static int pg_ensure_db(const layout_t *l, char *err, size_t errlen, int reused)
{
    char ci[PATH_MAX * 3];
    int rc = -1;
    PGresult *r = NULL;
    pg_conninfo(ci, sizeof ci, l->run, "postgres", 1);
    PGconn *conn = PQconnectdb(ci);
    if (PQstatus(conn) != CONNECTION_OK) {
        pq_fail(conn, "cannot connect to embedded PostgreSQL", err, errlen);
        goto done;
    }
    r = PQexec(conn, "SELECT 1 FROM pg_database WHERE datname = 'evently'");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pq_fail(conn, "cannot list databases", err, errlen);
        goto done;
    }
    if (PQntuples(r) == 0) {
        PQclear(r);
        r = PQexec(conn, "CREATE DATABASE evently");
        const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        if (PQresultStatus(r) != PGRES_COMMAND_OK &&
            !(state && (strcmp(state, "42P04") == 0 || strcmp(state, "23505") == 0))) {
            pq_fail(conn, "CREATE DATABASE evently failed", err, errlen);
            goto done;
        }
        ev_info("created database evently");
    }
    /* a cluster an older evently started may still trust its socket: the
     * files are ours now, and a reload applies them at once */
    if (reused) {
        PQclear(r);
        r = NULL;
        if (write_pg_auth(l, err, errlen) != 0)
            goto done;
        r = PQexec(conn, "SELECT pg_reload_conf()");
    }
    rc = 0;
done:
    PQclear(r);
    PQfinish(conn);
    return rc;
}

static int pg_start(const layout_t *l, ev_embedded_t *e, char *err, size_t errlen)
{
    char bindir[PATH_MAX], path[PATH_MAX], url[PATH_MAX * 3];
    PGPing p = pg_probe(l);
    if (p == PQPING_NO_ATTEMPT)
        return fail(err, errlen, "bad PostgreSQL socket directory %s", l->run);
    if (p != PQPING_OK) {
        if (pg_bindir(l->pg, bindir, sizeof bindir, err, errlen) != 0)
            return -1;
        if (join(path, sizeof path, l->pg, "PG_VERSION") != 0 || !is_file(path)) {
            if (pg_initdb(l, bindir, err, errlen) != 0)
                return -1;
        }
        if (write_pg_conf(l, err, errlen) != 0 || include_pg_conf(l, err, errlen) != 0 ||
            write_pg_auth(l, err, errlen) != 0)
            return -1;
        clear_stale_pid(l);
        if (pg_ctl_start(l, bindir, err, errlen) != 0)
            return -1;
        e->started_pg = 1;
        ev_info("started PostgreSQL (data %s, socket dir %s)", l->pg, l->run);
    } else {
        ev_info("reusing running PostgreSQL in %s", l->run);
    }
    if (pg_ensure_db(l, err, errlen, !e->started_pg) != 0)
        return -1;
    pg_conninfo(url, sizeof url, l->run, "evently", 0);
    if (!(e->database_url = strdup(url)))
        return fail(err, errlen, "out of memory");
    return 0;
}

static void pg_stop(const char *home)
{
    layout_t l;
    char bindir[PATH_MAX], prog[PATH_MAX], err[256];
    memset(&l, 0, sizeof l);
    if (layout_init(&l, home) != 0 || (geteuid() == 0 && lookup_user(&l.ru) != 0) ||
        pg_bindir(l.pg, bindir, sizeof bindir, err, sizeof err) != 0 ||
        join(prog, sizeof prog, bindir, "pg_ctl") != 0) {
        ev_error("cannot stop PostgreSQL in %s", home);
        return;
    }
    char *argv[] = {prog, "-D", l.pg, "-m", "fast", "-w", "stop", NULL};
    if (run(&l.ru, argv, l.pg_log, "PostgreSQL stop (pg_ctl)", err, sizeof err) != 0)
        ev_error("%s", err);
    else
        ev_info("stopped PostgreSQL in %s", l.pg);
}

/* ---- Redis ------------------------------------------------------------- */

/* 1 if a Redis answers PING on the socket. */
static int redis_ping(const char *sock)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct timeval tv = {1, 0};
    char buf[64];
    int ok = 0;
    if (strlen(sock) >= sizeof sa.sun_path)
        return 0;
    memcpy(sa.sun_path, sock, strlen(sock) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        send(fd, "PING\r\n", 6, MSG_NOSIGNAL) == 6) {
        ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
        /* a Redis that wants its password first is running too */
        ok = (n >= 5 && memcmp(buf, "+PONG", 5) == 0) || (n >= 7 && memcmp(buf, "-NOAUTH", 7) == 0);
    }
    close(fd);
    return ok;
}

/* SIGTERM, then SIGKILL when it has not exited after timeout_ms. */
static void stop_child(pid_t pid, int timeout_ms)
{
    int status;
    kill(pid, SIGTERM);
    for (long end = now_ms() + timeout_ms; now_ms() < end; sleep_ms(20)) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        /* ECHILD: stopped from a process that did not fork it; poll instead */
        if (r == pid || (r < 0 && errno == ECHILD && kill(pid, 0) != 0))
            return;
    }
    ev_warn("redis-server (pid %d) ignored SIGTERM for %d ms; killing it", (int)pid, timeout_ms);
    kill(pid, SIGKILL);
    wait_child(pid, &status);
}

/* Waits for PING; a server that exits meanwhile reports its log tail. */
static int redis_wait(const layout_t *l, pid_t pid, off_t from, char *err, size_t errlen)
{
    int status;
    char how[32], tail[512];
    for (long end = now_ms() + REDIS_START_MS; now_ms() < end; sleep_ms(20)) {
        if (redis_ping(l->redis_sock))
            return 0;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            describe_status(status, how, sizeof how);
            log_tail(l->redis_log, from, 3, tail, sizeof tail);
            return fail(err, errlen, "redis-server failed (%s): %s (see %s)", how, tail,
                        l->redis_log);
        }
    }
    stop_child(pid, REDIS_STOP_MS);
    return fail(err, errlen, "redis-server did not answer PING on %s within %d s (see %s)",
                l->redis_sock, REDIS_START_MS / 1000, l->redis_log);
}

/* The embedded Redis's password, made once: the file is Redis's own config
 * (read by redis-server, so the password is not on its command line, which
 * every local user sees), 0600 and owned by the servers' user. */
static int redis_password(const layout_t *l, char *conf, size_t conflen, char *pw, size_t pwlen,
                          char *err, size_t errlen)
{
    if (join(conf, conflen, l->redis_dir, "evently-redis.conf") != 0 || pwlen < 65)
        return fail(err, errlen, "path too long: %s", l->redis_dir);
    int fd = open(conf, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) {
        unsigned char raw[32];
        char hex[65], line[128];
        if (RAND_bytes(raw, sizeof raw) != 1) {
            close(fd);
            unlink(conf);
            return fail(err, errlen, "no random bytes for the Redis password");
        }
        for (size_t i = 0; i < sizeof raw; i++)
            snprintf(hex + 2 * i, 3, "%02x", raw[i]);
        snprintf(line, sizeof line, "requirepass %s\n", hex);
        int ok = write(fd, line, strlen(line)) == (ssize_t)strlen(line) && fsync(fd) == 0 &&
                 (!l->ru.drop || fchown(fd, l->ru.uid, l->ru.gid) == 0);
        close(fd);
        if (!ok) {
            unlink(conf);
            return fail(err, errlen, "cannot write %s: %s", conf, strerror(errno));
        }
    } else if (errno != EEXIST) {
        return fail(err, errlen, "cannot create %s: %s", conf, strerror(errno));
    }
    FILE *f = fopen(conf, "re");
    int got = f && fscanf(f, "requirepass %64[0-9a-f]", pw) == 1 && strlen(pw) == 64;
    if (f)
        fclose(f);
    return got ? 0 : fail(err, errlen, "%s holds no requirepass line; remove it", conf);
}

static int redis_start(const layout_t *l, ev_embedded_t *e, char *err, size_t errlen)
{
    char prog[PATH_MAX], url[PATH_MAX + 128], pidfile[PATH_MAX], conf[PATH_MAX], pw[80];
    char sock[PATH_MAX], dir[PATH_MAX], log[PATH_MAX];
    if (redis_password(l, conf, sizeof conf, pw, sizeof pw, err, errlen) != 0)
        return -1;
    snprintf(url, sizeof url, "unix:%s@%s", pw, l->redis_sock);
    if (!(e->redis_url = strdup(url)))
        return fail(err, errlen, "out of memory");
    if (redis_ping(l->redis_sock)) {
        ev_info("reusing running Redis on %s", l->redis_sock);
        return 0;
    }
    if (find_in_path("redis-server", prog, sizeof prog) != 0)
        return fail(err, errlen, "redis-server not found in PATH (install redis-server)");
    if (join(pidfile, sizeof pidfile, l->run, "redis.pid") != 0)
        return fail(err, errlen, "path too long: %s", l->run);
    snprintf(sock, sizeof sock, "%s", l->redis_sock);
    snprintf(dir, sizeof dir, "%s", l->redis_dir);
    snprintf(log, sizeof log, "%s", l->redis_log);
    char *argv[] = {prog, conf, "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700",
                    "--dir", dir, "--daemonize", "no", "--save", "", "--appendonly", "no",
                    /* a cache, a gate and rate counters: bounded, and any key may go */
                    "--maxmemory", EMBEDDED_REDIS_MAXMEMORY, "--maxmemory-policy", "allkeys-lru",
                    "--logfile", log, "--pidfile", pidfile, NULL};
    off_t from = file_size(l->redis_log);
    pid_t pid = spawn(&l->ru, argv, l->redis_log, 1);
    if (pid < 0)
        return fail(err, errlen, "redis-server: fork failed: %s", strerror(errno));
    if (redis_wait(l, pid, from, err, errlen) != 0)
        return -1;
    e->started_redis = 1;
    e->redis_pid = (int)pid;
    ev_info("started Redis (pid %d) on %s", (int)pid, l->redis_sock);
    return 0;
}

/* ---- API --------------------------------------------------------------- */

/* Held while starting so two processes on one home neither initdb nor start
 * the same server twice; O_CLOEXEC keeps it out of the servers. */
static int lock_home(const char *home, char *err, size_t errlen)
{
    char path[PATH_MAX];
    if (join(path, sizeof path, home, "embedded.lock") != 0)
        return fail(err, errlen, "path too long: %s", home);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return fail(err, errlen, "cannot open %s: %s", path, strerror(errno));
    while (flock(fd, LOCK_EX) != 0) {
        if (errno != EINTR) {
            close(fd);
            return fail(err, errlen, "cannot lock %s: %s", path, strerror(errno));
        }
    }
    return fd;
}

int ev_embedded_start(ev_embedded_t *e, const char *home, int want_pg, int want_redis, char *err,
                      size_t errlen)
{
    layout_t *l = calloc(1, sizeof *l);
    int lock = -1, rc = -1;
    memset(e, 0, sizeof *e);
    if (!l) {
        fail(err, errlen, "out of memory");
        goto done;
    }
    if (setup(l, e, home, err, errlen) != 0)
        goto done;
    if ((lock = lock_home(l->home, err, errlen)) < 0)
        goto done;
    if (want_pg && pg_start(l, e, err, errlen) != 0)
        goto done;
    if (want_redis && redis_start(l, e, err, errlen) != 0)
        goto done;
    rc = 0;
done:
    if (lock >= 0)
        close(lock);
    free(l);
    if (rc != 0)
        ev_embedded_stop(e); /* what was started before the failure */
    return rc;
}

void ev_embedded_stop(ev_embedded_t *e)
{
    if (e->started_redis && e->redis_pid > 0) {
        stop_child((pid_t)e->redis_pid, REDIS_STOP_MS);
        ev_info("stopped Redis (pid %d)", e->redis_pid);
    }
    if (e->started_pg && e->home)
        pg_stop(e->home);
    free(e->home);
    free(e->run_dir);
    free(e->database_url);
    free(e->redis_url);
    memset(e, 0, sizeof *e);
}
