/*
 * wl_writer STATEDIR: writes into its memory only when told to, through one
 * chosen channel at a time, so a test can compare what each write-tracking
 * method (BPF fault hints, PAGEMAP_SCAN) sees of each channel.
 *
 * - A 64 MiB private anonymous region, never touched except by commands;
 *   MADV_NOHUGEPAGE on all of it, so a store populates exactly one 4 KiB page.
 *   STATEDIR/region, written once: "START_HEX NPAGES THP_FIRST" where pages
 *   THP_FIRST .. THP_FIRST+511 are a 2 MiB-aligned part used by thp-store.
 * - Commands: the test writes STATEDIR/cmd ("SEQ VERB ARGS...", one line) and
 *   sends SIGUSR1. The main loop runs the command and writes STATEDIR/done:
 *   "SEQ ok [detail]", "SEQ skipped: <reason>" or "SEQ error: <reason>".
 *   Page arguments are page indexes into the region. VERBs:
 *     store P...          one 8-byte store at the start of each page
 *     thread-store P...   the same, from 2 new threads (pages split between them)
 *     read-into P...      pread() of a one-page file into each page (copy_to_user)
 *     dontneed P...       madvise(MADV_DONTNEED) of each page (it reads as 0 after)
 *     futex-wake-op P     FUTEX_WAKE_OP whose op sets the first word of page P
 *     odirect-read P      O_DIRECT pread() of a one-page file into page P
 *     thp-store           MADV_HUGEPAGE on the 2 MiB part, then a store to each of
 *                         its 512 pages; detail "thp_kb=N" (AnonHugePages of it)
 *     note HEX P...       the test itself wrote HEX into the first word of each
 *                         page (process_vm_writev, /proc/PID/mem): expect it
 * - expected[p] is the first word each page must hold; on SIGTERM every page
 *   of the region is checked against it.
 */
#include "wl_common.h"

#include <pthread.h>
#include <sys/mman.h>

#define PAGE 4096UL
#define MIB (1024UL * 1024UL)
#define REGION_LEN (64 * MIB)
#define NPAGES (REGION_LEN / PAGE)
#define THP_LEN (2 * MIB)
#define THP_PAGES (THP_LEN / PAGE)
#define MAX_ARGS 4096

#ifndef FUTEX_WAKE_OP
#define FUTEX_WAKE_OP 5
#endif
#ifndef FUTEX_PRIVATE_FLAG
#define FUTEX_PRIVATE_FLAG 128
#endif
#define WL_FUTEX_OP_SET 0
#define WL_FUTEX_OP_CMP_EQ 0
#define WL_FUTEX_OP(op, oparg, cmp, cmparg)                                            \
	((((op) & 0xf) << 28) | (((cmp) & 0xf) << 24) | (((oparg) & 0xfff) << 12) |     \
	 ((cmparg) & 0xfff))

static volatile sig_atomic_t wl_command;
static uint8_t *region;
static size_t thp_first;
static uint64_t *expected;
static char cmdbuf[65536];
static size_t args[MAX_ARGS];
static size_t nargs;
static int futex_word;
/* One page of file data, page-aligned so it also serves as an O_DIRECT buffer. */
static uint8_t filepage[PAGE] __attribute__((aligned(4096)));

static void usr1_handler(int sig)
{
	(void)sig;
	wl_command = 1;
}

static uint64_t *page_word(size_t p)
{
	return (uint64_t *)(region + p * PAGE);
}

static int respond(unsigned long long seq, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static int respond(unsigned long long seq, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n = snprintf(buf, sizeof(buf), "%llu ", seq);

	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
	va_end(ap);
	if (n >= (int)sizeof(buf) - 1)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	return wl_write_file("done", buf, (size_t)n);
}

/* Parses page indexes from `s` into args[]; -1 on a bad or out-of-range one. */
static int parse_pages(char *s)
{
	char *save = NULL;

	nargs = 0;
	for (char *tok = strtok_r(s, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save)) {
		char *end;
		unsigned long v = strtoul(tok, &end, 10);

		if (*end || v >= NPAGES || nargs == MAX_ARGS)
			return -1;
		args[nargs++] = v;
	}
	return 0;
}

/* Writes a one-page file STATEDIR/name whose first word is `value`. */
static int make_file(const char *name, uint64_t value)
{
	memset(filepage, 0, sizeof(filepage));
	memcpy(filepage, &value, sizeof(value));
	return wl_write_file(name, (const char *)filepage, PAGE);
}

struct store_job {
	unsigned long long seq;
	int first;
};

static void *store_thread(void *arg)
{
	struct store_job *job = arg;

	for (size_t i = (size_t)job->first; i < nargs; i += 2)
		*(volatile uint64_t *)page_word(args[i]) = wl_pattern(job->seq, args[i]);
	return NULL;
}

static const char *do_thread_store(unsigned long long seq)
{
	struct store_job jobs[2] = { { seq, 0 }, { seq, 1 } };
	pthread_t th[2];

	for (int t = 0; t < 2; t++)
		if (pthread_create(&th[t], NULL, store_thread, &jobs[t]))
			return "pthread_create failed";
	for (int t = 0; t < 2; t++)
		pthread_join(th[t], NULL);
	for (size_t i = 0; i < nargs; i++)
		expected[args[i]] = wl_pattern(seq, args[i]);
	return NULL;
}

static const char *do_read_into(unsigned long long seq)
{
	char path[4200];

	wl_path(path, sizeof(path), "readsrc");
	for (size_t i = 0; i < nargs; i++) {
		uint64_t v = wl_pattern(seq, args[i]);
		int fd;
		ssize_t n;

		if (make_file("readsrc", v))
			return "cannot write readsrc";
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return "cannot open readsrc";
		n = pread(fd, region + args[i] * PAGE, PAGE, 0);
		close(fd);
		if (n != (ssize_t)PAGE)
			return "short read into the region";
		expected[args[i]] = v;
	}
	return NULL;
}

/* Returns NULL on success, "" + reason in skip[] when O_DIRECT is refused. */
static const char *do_odirect_read(unsigned long long seq, char *skip, size_t skiplen)
{
	char path[4200];
	uint64_t v;
	ssize_t n;
	int fd;

	if (nargs != 1)
		return "odirect-read takes one page";
	v = wl_pattern(seq, args[0]);
	if (make_file("odirect", v))
		return "cannot write odirect";
	wl_path(path, sizeof(path), "odirect");
	fd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
	if (fd < 0) {
		snprintf(skip, skiplen, "open(O_DIRECT) in STATEDIR: %s", strerror(errno));
		return "";
	}
	n = pread(fd, region + args[0] * PAGE, PAGE, 0);
	if (n < 0 && errno == EINVAL) {
		snprintf(skip, skiplen, "O_DIRECT read in STATEDIR: %s", strerror(errno));
		close(fd);
		return "";
	}
	close(fd);
	if (n != (ssize_t)PAGE)
		return "short O_DIRECT read";
	expected[args[0]] = v;
	return NULL;
}

static const char *do_futex_wake_op(unsigned long long seq)
{
	unsigned oparg = (unsigned)(seq & 0x7ff) | 1;
	long rc;

	if (nargs != 1)
		return "futex-wake-op takes one page";
	rc = syscall(SYS_futex, &futex_word, FUTEX_WAKE_OP | FUTEX_PRIVATE_FLAG, 1,
		     (void *)1UL, page_word(args[0]),
		     WL_FUTEX_OP(WL_FUTEX_OP_SET, oparg, WL_FUTEX_OP_CMP_EQ, 0));
	if (rc < 0)
		return "futex(FUTEX_WAKE_OP) failed";
	/* The op sets the 32-bit futex word: the low half of the first u64. */
	expected[args[0]] = (expected[args[0]] & ~0xffffffffULL) | oparg;
	return NULL;
}

/* AnonHugePages (kB) of the VMA starting at addr, from /proc/self/smaps. */
static long anon_huge_kb(const void *addr)
{
	char line[512];
	FILE *f = fopen("/proc/self/smaps", "re");
	int in = 0;
	long kb = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long start, end;

		if (sscanf(line, "%lx-%lx ", &start, &end) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = start == (unsigned long)addr;
			continue;
		}
		if (in && sscanf(line, "AnonHugePages: %ld kB", &kb) == 1)
			break;
	}
	fclose(f);
	return kb;
}

static const char *do_thp_store(unsigned long long seq, long *kb)
{
	uint8_t *part = region + thp_first * PAGE;

	if (madvise(part, THP_LEN, MADV_HUGEPAGE))
		return "madvise(MADV_HUGEPAGE) failed";
	for (size_t i = 0; i < THP_PAGES; i++) {
		size_t p = thp_first + i;

		*(volatile uint64_t *)page_word(p) = wl_pattern(seq, p);
		expected[p] = wl_pattern(seq, p);
	}
	*kb = anon_huge_kb(part);
	return NULL;
}

static void run_command(void)
{
	char path[4200], verb[32], skip[256] = "";
	unsigned long long seq = 0;
	const char *err = NULL;
	long thp_kb = -1;
	int fd, off = 0;
	ssize_t n;

	wl_path(path, sizeof(path), "cmd");
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		wl_fail("cannot open cmd: %s", strerror(errno));
		return;
	}
	n = read(fd, cmdbuf, sizeof(cmdbuf) - 1);
	close(fd);
	if (n <= 0) {
		wl_fail("cannot read cmd");
		return;
	}
	cmdbuf[n] = 0;
	if (sscanf(cmdbuf, "%llu %31s %n", &seq, verb, &off) < 2) {
		respond(seq, "error: bad command");
		return;
	}
	if (!strcmp(verb, "note")) {
		char *rest = cmdbuf + off, *end;
		uint64_t v = strtoull(rest, &end, 16);

		if (end == rest || parse_pages(end))
			err = "bad note";
		for (size_t i = 0; !err && i < nargs; i++)
			expected[args[i]] = v;
	} else if (parse_pages(cmdbuf + off)) {
		err = "bad page list";
	} else if (!strcmp(verb, "store")) {
		for (size_t i = 0; i < nargs; i++) {
			*(volatile uint64_t *)page_word(args[i]) = wl_pattern(seq, args[i]);
			expected[args[i]] = wl_pattern(seq, args[i]);
		}
	} else if (!strcmp(verb, "thread-store")) {
		err = do_thread_store(seq);
	} else if (!strcmp(verb, "read-into")) {
		err = do_read_into(seq);
	} else if (!strcmp(verb, "dontneed")) {
		for (size_t i = 0; !err && i < nargs; i++) {
			if (madvise(region + args[i] * PAGE, PAGE, MADV_DONTNEED))
				err = "madvise(MADV_DONTNEED) failed";
			else
				expected[args[i]] = 0;
		}
	} else if (!strcmp(verb, "futex-wake-op")) {
		err = do_futex_wake_op(seq);
	} else if (!strcmp(verb, "odirect-read")) {
		err = do_odirect_read(seq, skip, sizeof(skip));
	} else if (!strcmp(verb, "thp-store")) {
		err = do_thp_store(seq, &thp_kb);
	} else {
		err = "unknown verb";
	}
	if (err && !*err)
		respond(seq, "skipped: %s", skip);
	else if (err)
		respond(seq, "error: %s: %s", verb, err);
	else if (thp_kb >= 0)
		respond(seq, "ok thp_kb=%ld", thp_kb);
	else
		respond(seq, "ok");
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	char buf[128];
	uintptr_t thp_start;
	int n;

	wl_init(argc, argv);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = usr1_handler;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0; /* no SA_RESTART: the sleep returns and the command runs at once */
	if (sigaction(SIGUSR1, &sa, NULL)) {
		fprintf(stderr, "sigaction(SIGUSR1): %s\n", strerror(errno));
		return 2;
	}
	expected = calloc(NPAGES, sizeof(*expected));
	region = mmap(NULL, REGION_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (!expected || region == MAP_FAILED) {
		fprintf(stderr, "allocation: %s\n", strerror(errno));
		return 2;
	}
	/* Touch expected[] now, so the loop never faults on it later. */
	memset(expected, 0, NPAGES * sizeof(*expected));
	if (madvise(region, REGION_LEN, MADV_NOHUGEPAGE)) {
		fprintf(stderr, "madvise(MADV_NOHUGEPAGE): %s\n", strerror(errno));
		return 2;
	}
	/* A 2 MiB-aligned part near the end (64 MiB leave room for the alignment). */
	thp_start = ((uintptr_t)region + REGION_LEN - 2 * THP_LEN + THP_LEN - 1) & ~(THP_LEN - 1);
	thp_first = (thp_start - (uintptr_t)region) / PAGE;
	n = snprintf(buf, sizeof(buf), "%lx %lu %zu\n", (unsigned long)(uintptr_t)region,
		     (unsigned long)NPAGES, thp_first);
	if (wl_write_file("region", buf, (size_t)n)) {
		fprintf(stderr, "cannot write region: %s\n", strerror(errno));
		return 2;
	}
	wl_ready();

	while (!wl_stop) {
		if (wl_command) {
			wl_command = 0;
			run_command();
		}
		wl_tick();
		wl_sleep_ms(50);
	}

	for (size_t p = 0; p < NPAGES; p++) {
		uint64_t got = *page_word(p);

		if (got != expected[p]) {
			wl_fail("page %zu holds %#llx, expected %#llx", p, (unsigned long long)got,
				(unsigned long long)expected[p]);
			break;
		}
	}
	wl_finish();
}
