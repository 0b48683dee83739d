/*
 * wl_cow STATEDIR [SIZE_MIB]: private memory shared copy-on-write by a parent,
 * its child and its grandchild, each with pages of its own.
 *
 * - The parent fills SIZE_MIB (default 128) MiB of private anonymous memory
 *   ("region", page i holds the pattern of seed SEED + i) and 1 MiB more it
 *   then makes read-only ("ro"), and forks the child.
 * - After the fork the parent rewrites its pages i % 16 == 3 (seed PARENT + i).
 * - The child rewrites its pages i % 8 == 1 (seed CHILD + i), drops the last
 *   64 pages of the region (MADV_DONTNEED: zeros), makes "ro" writable and
 *   rewrites its first page, then forks the grandchild, which rewrites its
 *   pages i % 8 == 5 (seed GRAND + i).
 * - STATEDIR/child and STATEDIR/grandchild hold their pids (the grandchild
 *   writes its own once its writes are done), STATEDIR/region "ADDR PAGES" in
 *   hex and decimal (all written before "ready").
 *
 * The child and the grandchild wait, each in a read of a pipe from its parent.
 * On SIGTERM the parent checks its memory, marks its pages i % 32 == 0 (seed
 * MARK_P + i) and writes a byte to the child; the child checks its memory (it
 * must not see the parent's marks), marks the same pages with its own seed and
 * wakes the grandchild, which checks its memory (neither mark), marks, checks
 * again and exits. The child waits for it, checks again (its own marks, not
 * the grandchild's) and exits; the parent waits for the child and checks again
 * (its marks, not the child's). Each exits 1 after printing why on failure.
 */
#include "wl_common.h"

#include <sys/mman.h>
#include <sys/wait.h>

#define PAGE 4096UL
#define MIB (1024UL * 1024UL)
#define DROPPED 64
#define RO_PAGES 256
#define SEED 0x5EED0000ULL
#define PARENT 0x9A000000ULL
#define CHILD 0xC4000000ULL
#define GRAND 0x64000000ULL
#define MARK_P 0x3A000000ULL
#define MARK_C 0x3C000000ULL
#define MARK_G 0x36000000ULL

enum who { WHO_PARENT, WHO_CHILD, WHO_GRAND };

static uint8_t *region, *ro;
static size_t pages;

/* The seed page i of the region holds for `who`; 0: zeros (dropped). */
static uint64_t seed_of(enum who who, size_t i, uint64_t mark)
{
	if (mark && i % 32 == 0)
		return mark + i;
	if (who == WHO_PARENT)
		return i % 16 == 3 ? PARENT + i : SEED + i;
	if (i >= pages - DROPPED)
		return 0;
	if (who == WHO_GRAND && i % 8 == 5)
		return GRAND + i;
	if (i % 8 == 1)
		return CHILD + i;
	return SEED + i;
}

static void check(enum who who, uint64_t mark, const char *when)
{
	static const char *names[] = { "parent", "child", "grandchild" };

	for (size_t i = 0; i < pages && !wl_failure[0]; i++) {
		uint64_t seed = seed_of(who, i, mark);
		const uint8_t *p = region + i * PAGE;

		if (seed == 0) {
			for (size_t b = 0; b < PAGE; b++)
				if (p[b]) {
					wl_fail("%s %s: dropped page %zu is not zero", names[who], when, i);
					break;
				}
		} else if (wl_check_fill(p, PAGE, seed) >= 0) {
			wl_fail("%s %s: page %zu does not hold seed %#llx", names[who], when, i,
				(unsigned long long)seed);
		}
	}
	for (size_t i = 0; i < RO_PAGES && !wl_failure[0]; i++) {
		uint64_t seed = who != WHO_PARENT && i == 0 ? CHILD + 1000000 : SEED + 1000000 + i;

		if (wl_check_fill(ro + i * PAGE, PAGE, seed) >= 0)
			wl_fail("%s %s: read-only page %zu changed", names[who], when, i);
	}
	wl_expect_perms("ro", ro, who == WHO_PARENT ? "r--p" : "rw-p");
}

static void mark(uint64_t seed)
{
	for (size_t i = 0; i < pages; i += 32)
		wl_fill(region + i * PAGE, PAGE, seed + i);
}

/* Blocks until a byte arrives on fd (or EOF). */
static void wait_byte(int fd)
{
	char c;

	while (read(fd, &c, 1) < 0 && errno == EINTR)
		;
}

static int wait_child(pid_t pid)
{
	int status = 0;

	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -1;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

static void __attribute__((noreturn)) grandchild_main(int from_child)
{
	char buf[32];
	int n;

	for (size_t i = 5; i < pages - DROPPED; i += 8)
		wl_fill(region + i * PAGE, PAGE, GRAND + i);
	/* Its pid tells the parent every process has done its writes. */
	n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
	if (wl_write_file("grandchild", buf, (size_t)n))
		wl_fail("grandchild: cannot write its pid");
	wait_byte(from_child);
	check(WHO_GRAND, 0, "before the marks");
	mark(MARK_G);
	check(WHO_GRAND, MARK_G, "after its marks");
	if (wl_failure[0])
		fprintf(stderr, "wl_cow grandchild: FAIL: %s\n", wl_failure);
	_exit(wl_failure[0] ? 1 : 0);
}

static void __attribute__((noreturn)) child_main(int from_parent)
{
	int to_grand[2];
	pid_t grand;

	signal(SIGTERM, SIG_IGN);
	for (size_t i = 1; i < pages; i += 8)
		wl_fill(region + i * PAGE, PAGE, CHILD + i);
	madvise(region + (pages - DROPPED) * PAGE, DROPPED * PAGE, MADV_DONTNEED);
	if (mprotect(ro, RO_PAGES * PAGE, PROT_READ | PROT_WRITE))
		wl_fail("child: mprotect: %s", strerror(errno));
	wl_fill(ro, PAGE, CHILD + 1000000);
	if (pipe(to_grand))
		wl_fail("child: pipe: %s", strerror(errno));
	grand = fork();
	if (grand == 0) {
		close(to_grand[1]);
		grandchild_main(to_grand[0]);
	}
	close(to_grand[0]);
	if (grand < 0)
		wl_fail("child: fork: %s", strerror(errno));
	wait_byte(from_parent);
	check(WHO_CHILD, 0, "before the marks");
	mark(MARK_C);
	if (write(to_grand[1], "g", 1) != 1)
		wl_fail("child: write to the grandchild: %s", strerror(errno));
	if (grand > 0 && wait_child(grand))
		wl_fail("child: the grandchild failed");
	check(WHO_CHILD, MARK_C, "after the marks");
	if (wl_failure[0])
		fprintf(stderr, "wl_cow child: FAIL: %s\n", wl_failure);
	_exit(wl_failure[0] ? 1 : 0);
}

int main(int argc, char **argv)
{
	uint64_t size_mib = 128;
	int to_child[2];
	pid_t child;
	char buf[64];
	int n;

	wl_init(argc, argv);
	if (argc > 2)
		size_mib = strtoull(argv[2], NULL, 10);
	if (size_mib < 4) {
		fprintf(stderr, "SIZE_MIB must be >= 4\n");
		return 2;
	}
	pages = size_mib * MIB / PAGE;
	region = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		      -1, 0);
	ro = mmap(NULL, RO_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		  0);
	if (region == MAP_FAILED || ro == MAP_FAILED) {
		fprintf(stderr, "mmap: %s\n", strerror(errno));
		return 2;
	}
	/* No transparent huge pages: each process's own pages stay 4 KiB apart. */
	madvise(region, pages * PAGE, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < pages; i++)
		wl_fill(region + i * PAGE, PAGE, SEED + i);
	for (size_t i = 0; i < RO_PAGES; i++)
		wl_fill(ro + i * PAGE, PAGE, SEED + 1000000 + i);
	if (mprotect(ro, RO_PAGES * PAGE, PROT_READ) || pipe(to_child)) {
		fprintf(stderr, "mprotect/pipe: %s\n", strerror(errno));
		return 2;
	}
	child = fork();
	if (child < 0) {
		fprintf(stderr, "fork: %s\n", strerror(errno));
		return 2;
	}
	if (child == 0) {
		close(to_child[1]);
		child_main(to_child[0]);
	}
	close(to_child[0]);
	for (size_t i = 3; i < pages; i += 16)
		wl_fill(region + i * PAGE, PAGE, PARENT + i);
	n = snprintf(buf, sizeof(buf), "%d\n", (int)child);
	if (wl_write_file("child", buf, (size_t)n)) {
		fprintf(stderr, "cannot write child\n");
		return 2;
	}
	n = snprintf(buf, sizeof(buf), "%llx %zu\n", (unsigned long long)(uintptr_t)region, pages);
	if (wl_write_file("region", buf, (size_t)n)) {
		fprintf(stderr, "cannot write region\n");
		return 2;
	}
	/* The grandchild's pid file tells that the child has done its writes. */
	for (;;) {
		char path[4200];

		wl_path(path, sizeof(path), "grandchild");
		if (access(path, F_OK) == 0)
			break;
		wl_sleep_ms(5);
	}
	wl_ready();
	while (!wl_stop) {
		wl_tick();
		wl_sleep_ms(50);
	}
	check(WHO_PARENT, 0, "before the marks");
	mark(MARK_P);
	if (write(to_child[1], "c", 1) != 1)
		wl_fail("write to the child: %s", strerror(errno));
	if (wait_child(child))
		wl_fail("the child failed");
	check(WHO_PARENT, MARK_P, "after the marks");
	wl_finish();
}
