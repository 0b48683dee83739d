/*
 * Shared scaffolding for the vmtests workloads (the ZDTM-style contract):
 *
 *   wl_X STATEDIR [args]
 *   - setsid(), build state, then write STATEDIR/ready (tmp + rename);
 *   - loop: advance a counter, rewrite STATEDIR/counter (open/write/close +
 *     rename, no fd is kept), sleep ~50 ms;
 *   - on SIGTERM (handler only sets a flag, no SA_RESTART so sleeps return
 *     EINTR): verify all state, write "PASS\n" or "FAIL: <what>\n" to
 *     STATEDIR/result, exit 0 or 1.
 *
 * stdout/stderr are never relied on. Only async-signal-safe, allocation-free
 * calls are used in the loop so that the heap and the fd table stay still
 * while the harness compares /proc-visible state.
 */
#ifndef WL_COMMON_H
#define WL_COMMON_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/rseq.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define WL_UNUSED __attribute__((unused))

static volatile sig_atomic_t wl_stop;
static char wl_dir[4096];
static char wl_failure[1024];
static pid_t wl_pid;
static uint64_t wl_counter;
/* Per-thread kernel links glibc sets up, recorded at start and checked at the end. */
static void *wl_robust_head;
static size_t wl_robust_len;
static int *wl_tid_address;

static WL_UNUSED void wl_term_handler(int sig)
{
	(void)sig;
	wl_stop = 1;
}

/* Records the first failure only: it is the most useful one. */
__attribute__((format(printf, 1, 2))) static void wl_fail(const char *fmt, ...)
{
	va_list ap;

	if (wl_failure[0])
		return;
	va_start(ap, fmt);
	vsnprintf(wl_failure, sizeof(wl_failure), fmt, ap);
	va_end(ap);
}

static WL_UNUSED void wl_path(char *buf, size_t len, const char *name)
{
	snprintf(buf, len, "%s/%s", wl_dir, name);
}

/* Atomically replaces STATEDIR/name with data (write to name.tmp, rename). */
static WL_UNUSED int wl_write_file(const char *name, const char *data, size_t len)
{
	char tmp[4200], dst[4200];
	size_t off = 0;
	int fd;
	char self[32];
	ssize_t self_len;

	/*
	 * The tmp name carries the pid as the host sees it (/proc/self): a
	 * restored copy in a new pid namespace has its original's pid inside
	 * but not outside, and may run beside it on the same STATEDIR. A
	 * process restored in place gets the same name again, so an fd a dump
	 * caught open on it finds its file back.
	 */
	self_len = readlink("/proc/self", self, sizeof(self) - 1);
	if (self_len <= 0)
		self_len = 0;
	self[self_len] = 0;
	snprintf(tmp, sizeof(tmp), "%s/%s.%s.tmp", wl_dir, name, self);
	wl_path(dst, sizeof(dst), name);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	while (off < len) {
		ssize_t n = write(fd, data + off, len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			close(fd);
			return -1;
		}
		off += (size_t)n;
	}
	if (close(fd))
		return -1;
	return rename(tmp, dst);
}

/*
 * Publishes a value that changes while the workload runs (STATEDIR/name) as
 * the target of a symlink: symlink(2) then rename(2), so no file is ever open
 * for it. A dump that froze the workload while wl_write_file had its tmp file
 * open would otherwise hold that fd, and the original, running on after a
 * --leave-running dump, renames the tmp away: the restore rightly refuses the
 * missing file. The harness reads the value with readlink.
 */
static WL_UNUSED int wl_publish(const char *name, const char *text)
{
	char tmp[4200], dst[4200];
	char self[32];
	ssize_t self_len = readlink("/proc/self", self, sizeof(self) - 1);

	if (self_len <= 0)
		self_len = 0;
	self[self_len] = 0;
	snprintf(tmp, sizeof(tmp), "%s/%s.%s.lnk", wl_dir, name, self);
	wl_path(dst, sizeof(dst), name);
	if (symlink(text, tmp)) {
		/* Left by a copy killed between the two calls. */
		if (errno != EEXIST || unlink(tmp) || symlink(text, tmp))
			return -1;
	}
	return rename(tmp, dst);
}

static WL_UNUSED void wl_write_counter(void)
{
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%llu\n", (unsigned long long)wl_counter);

	if (n < 0 || wl_publish("counter", buf))
		wl_fail("cannot write counter: %s", strerror(errno));
}

/* Parses the common arguments; must be called first. */
static WL_UNUSED void wl_init(int argc, char **argv)
{
	struct sigaction sa;
	sigset_t unblock;

	if (argc < 2) {
		fprintf(stderr, "usage: %s STATEDIR [args]\n", argv[0]);
		exit(2);
	}
	if (strlen(argv[1]) >= sizeof(wl_dir) - 64 || argv[1][0] != '/') {
		fprintf(stderr, "STATEDIR must be an absolute path\n");
		exit(2);
	}
	strcpy(wl_dir, argv[1]);
	if (setsid() < 0) {
		fprintf(stderr, "setsid: %s\n", strerror(errno));
		exit(2);
	}
	wl_pid = getpid();

	/*
	 * Start from a known state whatever the spawner leaked: only stdio open
	 * (an inherited pipe, e.g. a jobserver, would make us unrestorable),
	 * default dispositions, nothing blocked.
	 */
	syscall(SYS_close_range, 3U, ~0U, 0U);
	for (int sig = 1; sig < NSIG; sig++)
		if (sig != SIGKILL && sig != SIGSTOP)
			signal(sig, SIG_DFL);
	sigemptyset(&unblock);
	sigprocmask(SIG_SETMASK, &unblock, NULL);

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = wl_term_handler;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0; /* no SA_RESTART: the sleep must return on SIGTERM */
	if (sigaction(SIGTERM, &sa, NULL)) {
		fprintf(stderr, "sigaction: %s\n", strerror(errno));
		exit(2);
	}
	if (syscall(SYS_get_robust_list, 0, &wl_robust_head, &wl_robust_len) ||
	    prctl(PR_GET_TID_ADDRESS, &wl_tid_address)) {
		fprintf(stderr, "get_robust_list/PR_GET_TID_ADDRESS: %s\n", strerror(errno));
		exit(2);
	}
}

/* Says the state is built. The content is the pid, for humans. */
static WL_UNUSED void wl_ready(void)
{
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%d\n", (int)wl_pid);

	wl_write_counter();
	if (wl_write_file("ready", buf, (size_t)n)) {
		fprintf(stderr, "cannot write ready: %s\n", strerror(errno));
		exit(2);
	}
}

static WL_UNUSED void wl_sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL); /* EINTR on SIGTERM is the point */
}

/* One loop step: bump and publish the counter. */
static WL_UNUSED void wl_tick(void)
{
	wl_counter++;
	wl_write_counter();
}

/*
 * The robust futex list, clear_child_tid and the rseq registration glibc made
 * must all still be in place: registering glibc's rseq area again must fail
 * with EBUSY, which the kernel returns only for the same live registration.
 */
static void wl_check_task_links(void)
{
	void *head = NULL;
	size_t len = 0;
	int *tidp = NULL;

	if (syscall(SYS_get_robust_list, 0, &head, &len) || head != wl_robust_head ||
	    len != wl_robust_len)
		wl_fail("robust list is %p/%zu, was %p/%zu", head, len, wl_robust_head,
			wl_robust_len);
	if (prctl(PR_GET_TID_ADDRESS, &tidp) || tidp != wl_tid_address)
		wl_fail("clear_child_tid is %p, was %p", (void *)tidp, (void *)wl_tid_address);
	if (__rseq_size > 0) {
		void *area = (char *)__builtin_thread_pointer() + __rseq_offset;

		errno = 0;
		if (syscall(SYS_rseq, area, __rseq_size < 32 ? 32 : __rseq_size, 0, 0x53053053) != -1 ||
		    errno != EBUSY)
			wl_fail("rseq is not registered at glibc's area (errno %d)", errno);
	}
}

/* Checks the invariants every workload shares, writes the result, exits. */
static void __attribute__((noreturn)) wl_finish(void)
{
	char buf[1100];
	int n;

	if (getpid() != wl_pid)
		wl_fail("getpid() is %d, was %d at start", (int)getpid(), (int)wl_pid);
	if (wl_counter == 0)
		wl_fail("the counter never advanced");
	wl_check_task_links();
	if (wl_failure[0])
		n = snprintf(buf, sizeof(buf), "FAIL: %s\n", wl_failure);
	else
		n = snprintf(buf, sizeof(buf), "PASS\n");
	if (wl_write_file("result", buf, (size_t)n))
		exit(3);
	exit(wl_failure[0] ? 1 : 0);
}

/* Position-dependent pattern: differs for every 8-byte word and every seed. */
static WL_UNUSED inline uint64_t wl_pattern(uint64_t seed, uint64_t index)
{
	uint64_t x = (index + 1) * 0x9E3779B97F4A7C15ULL ^ seed;

	x ^= x >> 31;
	x *= 0xBF58476D1CE4E5B9ULL;
	return x ^ (x >> 29);
}

static WL_UNUSED void wl_fill(void *mem, size_t len, uint64_t seed)
{
	uint64_t *p = mem;

	for (size_t i = 0; i < len / 8; i++)
		p[i] = wl_pattern(seed, i);
}

/* Returns the index of the first bad word, or -1 when all match. */
static WL_UNUSED long wl_check_fill(const void *mem, size_t len, uint64_t seed)
{
	const uint64_t *p = mem;

	for (size_t i = 0; i < len / 8; i++)
		if (p[i] != wl_pattern(seed, i))
			return (long)i;
	return -1;
}

static WL_UNUSED uint64_t wl_checksum(const void *mem, size_t len)
{
	const uint64_t *p = mem;
	uint64_t sum = 0;

	for (size_t i = 0; i < len / 8; i++)
		sum = (sum ^ p[i]) * 0x100000001B3ULL;
	return sum;
}

/* Returns the "perms" column of /proc/self/maps for the VMA containing addr. */
static WL_UNUSED int wl_vma_perms(const void *addr, char perms[5])
{
	char line[512];
	FILE *f = fopen("/proc/self/maps", "re");
	int found = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long start, end;
		char p[5];

		if (sscanf(line, "%lx-%lx %4s", &start, &end, p) != 3)
			continue;
		if ((unsigned long)addr >= start && (unsigned long)addr < end) {
			memcpy(perms, p, 5);
			found = 0;
			break;
		}
	}
	fclose(f);
	return found;
}

static WL_UNUSED void wl_expect_perms(const char *what, const void *addr, const char *want)
{
	char perms[5];

	if (wl_vma_perms(addr, perms))
		wl_fail("%s: no VMA at %p", what, addr);
	else if (strcmp(perms, want))
		wl_fail("%s: perms %s, want %s", what, perms, want);
}

#endif
