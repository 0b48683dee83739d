/*
 * wl_lazy STATEDIR [SIZE_MIB]: memory that a lazy restore fills in through
 * userfaultfd while the process already runs again, and a process that keeps
 * changing its address space during that phase. The restore must honour every
 * munmap, mremap, MADV_DONTNEED and fork the process does, and must never copy
 * stale data into a range the process has dropped since.
 *
 * State, built before "ready" (every region sits between PROT_NONE guard
 * pages, so that no VMA merges with a neighbour):
 * - P: SIZE_MIB (default 256) MiB private anonymous; 8-byte word i holds
 *   wl_pattern(P_SEED, i). A checksum of all of it and one per 4 MiB chunk.
 * - D ("drop"): 64 pages, two halves of 32 with their own patterns.
 * - R ("remap"): 64 pages with a pattern, in one of two reserved slots (the
 *   slot R is not in is a PROT_NONE mapping, so it stays free).
 * - U ("unmap"): 64 pages, two halves of 32 with their own patterns.
 * - F ("fork-checked"): 256 pages with a pattern.
 *
 * Loop, every ~50 ms, in this order and without any allocation:
 * 1. Verify a window of 64 consecutive pages of P; the window moves by 64
 *    pages each tick and wraps at the end.
 * 2. Only while STATEDIR/churn exists (checked with access(), no fd is kept):
 *    the test creates it just before a restore, so that the churn happens in
 *    the lazy phase, while before the dump the mappings stay still.
 *    a. MADV_DONTNEED on D's first half, which must then read as zero (it is
 *       not touched in between: this is the tick's first access to it), then
 *       fill it with a pattern new to this tick (so stale data copied in later
 *       would show); D's second half must keep its pattern.
 *    b. mremap R (MREMAP_MAYMOVE | MREMAP_FIXED) into the other slot, verify
 *       all of it there, and reserve the slot it left again (PROT_NONE).
 *    c. munmap U's second half, mmap fresh memory at the same address
 *       (MAP_FIXED), which must read as zero, fill it with a pattern new to
 *       this tick; U's first half must keep its pattern.
 *    d. fork(): the child verifies all of F and one 4 MiB chunk of P (pattern
 *       and chunk checksum), overwrites one page of F, and _exit()s with 0 when
 *       all is well or with one of the CHILD_* codes; the parent reaps it
 *       (blocking, EINTR retried) and checks that its own copy of that page of
 *       F did not change.
 *    Then the churn tick is counted: STATEDIR/churn_ticks ("N\n", "0\n" from
 *    before "ready" on) is rewritten, so a test can watch the churn run.
 * 3. Publish the counter (wl_tick()).
 *
 * On SIGTERM: all of P (pattern and checksum), D, R, U (with the latest
 * patterns) and F are verified, each must still be rw-p (and R's empty slot
 * ---p), STATEDIR/churn_ticks is written once more, then the common checks
 * run and STATEDIR/result is written.
 */
#include "wl_common.h"

#include <sys/mman.h>
#include <sys/wait.h>

#define PAGE 4096UL
#define WORDS (PAGE / 8)
#define MIB (1024UL * 1024UL)
#define TICK_MS 50
#define WINDOW_PAGES 64
#define CHUNK_PAGES (4 * MIB / PAGE)
#define HALF_PAGES 32
#define HALF_LEN (HALF_PAGES * PAGE)
#define D_LEN (2 * HALF_LEN)
#define U_LEN (2 * HALF_LEN)
#define R_LEN (64 * PAGE)
#define F_PAGES 256
#define F_LEN (F_PAGES * PAGE)

#define P_SEED 0x1A2700ULL
#define D_HEAD_SEED 0xD00DULL
#define D_TAIL_SEED 0xD7A1ULL
#define R_SEED 0x5E3A9ULL
#define U_HEAD_SEED 0x0EADULL
#define U_TAIL_SEED 0x07A1ULL
#define F_SEED 0xF02CULL
/* The child's write into its copy of F. */
#define F_CHILD_SEED 0xC41DULL
/* Churn tick n uses CHURN_SEED + n: never one of the seeds above. */
#define CHURN_SEED 0xC0000000ULL

/* Exit codes of the forked child. */
enum {
	CHILD_OK = 0,
	CHILD_F_BAD = 10,
	CHILD_P_BAD = 11,
	CHILD_P_SUM = 12,
	CHILD_WRITE_LOST = 13,
};

static uint8_t *p_mem, *d_mem, *u_mem, *f_mem;
static size_t p_pages, p_chunks;
static uint64_t p_sum;
static uint64_t *p_chunk_sum;
/* R lives in r_slot[r_cur]; the other slot is a PROT_NONE reservation. */
static uint8_t *r_slot[2];
static int r_cur;
static uint64_t d_head_seed = D_HEAD_SEED, u_tail_seed = U_TAIL_SEED;
static size_t p_window;
static uint64_t churn_ticks;
static char churn_path[4200];

/* Maps len bytes with a PROT_NONE guard page on each side. */
static void *guarded_map(size_t len)
{
	uint8_t *p = mmap(NULL, len + 2 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		fprintf(stderr, "mmap: %s\n", strerror(errno));
		exit(2);
	}
	if (mprotect(p + PAGE, len, PROT_READ | PROT_WRITE)) {
		fprintf(stderr, "mprotect: %s\n", strerror(errno));
		exit(2);
	}
	return p + PAGE;
}

/* Word i of mem gets wl_pattern(seed, first + i). */
static void fill_words(void *mem, size_t len, uint64_t seed, uint64_t first)
{
	uint64_t *w = mem;

	for (size_t i = 0; i < len / 8; i++)
		w[i] = wl_pattern(seed, first + i);
}

/* Returns the index of the first word that does not match, or -1. */
static long check_words(const void *mem, size_t len, uint64_t seed, uint64_t first)
{
	const uint64_t *w = mem;

	for (size_t i = 0; i < len / 8; i++)
		if (w[i] != wl_pattern(seed, first + i))
			return (long)i;
	return -1;
}

/* Returns the index of the first nonzero word, or -1. */
static long check_zero(const void *mem, size_t len)
{
	const uint64_t *w = mem;

	for (size_t i = 0; i < len / 8; i++)
		if (w[i])
			return (long)i;
	return -1;
}

static size_t chunk_pages(size_t chunk)
{
	size_t first = chunk * CHUNK_PAGES;

	return p_pages - first < CHUNK_PAGES ? p_pages - first : CHUNK_PAGES;
}

/* Verifies count pages of P from page first on (wrapping); fails with the page. */
static void check_p_window(size_t first, size_t count)
{
	for (size_t n = 0; n < count; n++) {
		size_t page = (first + n) % p_pages;
		long bad = check_words(p_mem + page * PAGE, PAGE, P_SEED, page * WORDS);

		if (bad >= 0) {
			wl_fail("P page %zu: bad word %ld (window at page %zu, tick %llu)", page,
				bad, first, (unsigned long long)wl_counter);
			return;
		}
	}
}

/* a. Drop D's first half and write it again; the second half stays. */
static void churn_drop(uint64_t seed)
{
	long bad;

	if (madvise(d_mem, HALF_LEN, MADV_DONTNEED)) {
		wl_fail("churn %llu: madvise(D, MADV_DONTNEED): %s",
			(unsigned long long)churn_ticks, strerror(errno));
		return;
	}
	bad = check_zero(d_mem, HALF_LEN);
	if (bad >= 0)
		wl_fail("churn %llu: D page %ld is not zero after MADV_DONTNEED (word %ld)",
			(unsigned long long)churn_ticks, bad / (long)WORDS, bad % (long)WORDS);
	fill_words(d_mem, HALF_LEN, seed, 0);
	d_head_seed = seed;
	bad = check_words(d_mem + HALF_LEN, HALF_LEN, D_TAIL_SEED, 0);
	if (bad >= 0)
		wl_fail("churn %llu: D second half, page %ld: bad word %ld",
			(unsigned long long)churn_ticks, HALF_PAGES + bad / (long)WORDS,
			bad % (long)WORDS);
}

/* b. Move R into its other slot and reserve the slot it left. */
static void churn_remap(void)
{
	uint8_t *from = r_slot[r_cur], *to = r_slot[!r_cur];
	void *moved, *reserved;
	long bad;

	moved = mremap(from, R_LEN, R_LEN, MREMAP_MAYMOVE | MREMAP_FIXED, to);
	if (moved == MAP_FAILED) {
		wl_fail("churn %llu: mremap(R, %p -> %p): %s", (unsigned long long)churn_ticks,
			(void *)from, (void *)to, strerror(errno));
		return;
	}
	if (moved != to) {
		wl_fail("churn %llu: mremap(R) moved to %p, asked for %p",
			(unsigned long long)churn_ticks, moved, (void *)to);
		return;
	}
	r_cur = !r_cur;
	bad = check_words(to, R_LEN, R_SEED, 0);
	if (bad >= 0)
		wl_fail("churn %llu: R after mremap to %p, page %ld: bad word %ld",
			(unsigned long long)churn_ticks, (void *)to, bad / (long)WORDS,
			bad % (long)WORDS);
	reserved = mmap(from, R_LEN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
			-1, 0);
	if (reserved != from)
		wl_fail("churn %llu: cannot reserve R's old slot %p again: %s",
			(unsigned long long)churn_ticks, (void *)from,
			reserved == MAP_FAILED ? strerror(errno) : "mapped elsewhere");
}

/* c. Replace U's second half with fresh memory; the first half stays. */
static void churn_unmap(uint64_t seed)
{
	uint8_t *tail = u_mem + HALF_LEN;
	void *fresh;
	long bad;

	if (munmap(tail, HALF_LEN)) {
		wl_fail("churn %llu: munmap(U second half): %s", (unsigned long long)churn_ticks,
			strerror(errno));
		return;
	}
	fresh = mmap(tail, HALF_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
		     -1, 0);
	if (fresh != tail) {
		wl_fail("churn %llu: mmap(U second half at %p): %s",
			(unsigned long long)churn_ticks, (void *)tail,
			fresh == MAP_FAILED ? strerror(errno) : "mapped elsewhere");
		return;
	}
	bad = check_zero(tail, HALF_LEN);
	if (bad >= 0)
		wl_fail("churn %llu: fresh U page %ld is not zero (word %ld)",
			(unsigned long long)churn_ticks, HALF_PAGES + bad / (long)WORDS,
			bad % (long)WORDS);
	fill_words(tail, HALF_LEN, seed, 0);
	u_tail_seed = seed;
	bad = check_words(u_mem, HALF_LEN, U_HEAD_SEED, 0);
	if (bad >= 0)
		wl_fail("churn %llu: U first half, page %ld: bad word %ld",
			(unsigned long long)churn_ticks, bad / (long)WORDS, bad % (long)WORDS);
}

/* In the forked child: returns its exit code. */
static int child_check(size_t fpage, size_t chunk)
{
	uint8_t *chunk_mem = p_mem + chunk * CHUNK_PAGES * PAGE;
	size_t chunk_len = chunk_pages(chunk) * PAGE;
	uint8_t *page = f_mem + fpage * PAGE;

	if (check_words(f_mem, F_LEN, F_SEED, 0) >= 0)
		return CHILD_F_BAD;
	if (check_words(chunk_mem, chunk_len, P_SEED, chunk * CHUNK_PAGES * WORDS) >= 0)
		return CHILD_P_BAD;
	if (wl_checksum(chunk_mem, chunk_len) != p_chunk_sum[chunk])
		return CHILD_P_SUM;
	fill_words(page, PAGE, F_CHILD_SEED, 0);
	if (check_words(page, PAGE, F_CHILD_SEED, 0) >= 0)
		return CHILD_WRITE_LOST;
	return CHILD_OK;
}

static const char *child_failure(int code)
{
	switch (code) {
	case CHILD_F_BAD:
		return "F does not hold its pattern";
	case CHILD_P_BAD:
		return "the P chunk does not hold its pattern";
	case CHILD_P_SUM:
		return "the P chunk checksum does not match";
	case CHILD_WRITE_LOST:
		return "its write to F did not read back";
	default:
		return "unknown exit code";
	}
}

/* d. Fork a child that checks F and a chunk of P and writes to its copy of F. */
static void churn_fork(void)
{
	size_t fpage = churn_ticks % F_PAGES;
	size_t chunk = churn_ticks % p_chunks;
	int status;
	pid_t child;
	long bad;

	child = fork();
	if (child < 0) {
		wl_fail("churn %llu: fork: %s", (unsigned long long)churn_ticks, strerror(errno));
		return;
	}
	if (child == 0)
		_exit(child_check(fpage, chunk));
	while (waitpid(child, &status, 0) < 0) {
		if (errno != EINTR) {
			wl_fail("churn %llu: waitpid(%d): %s", (unsigned long long)churn_ticks,
				(int)child, strerror(errno));
			return;
		}
	}
	if (WIFSIGNALED(status))
		wl_fail("churn %llu: forked child killed by signal %d",
			(unsigned long long)churn_ticks, WTERMSIG(status));
	else if (!WIFEXITED(status) || WEXITSTATUS(status) != CHILD_OK)
		wl_fail("churn %llu: forked child (F page %zu, P chunk %zu) exited with %d: %s",
			(unsigned long long)churn_ticks, fpage, chunk, WEXITSTATUS(status),
			child_failure(WEXITSTATUS(status)));
	bad = check_words(f_mem + fpage * PAGE, PAGE, F_SEED, fpage * WORDS);
	if (bad >= 0)
		wl_fail("churn %llu: F page %zu (the child wrote its copy) changed: bad word %ld",
			(unsigned long long)churn_ticks, fpage, bad);
}

static void write_churn_ticks(void)
{
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%llu\n", (unsigned long long)churn_ticks);

	if (n < 0 || wl_publish("churn_ticks", buf))
		wl_fail("cannot write churn_ticks: %s", strerror(errno));
}

static void churn(void)
{
	uint64_t seed = CHURN_SEED + churn_ticks;

	churn_drop(seed);
	churn_remap();
	churn_unmap(seed);
	churn_fork();
	churn_ticks++;
	write_churn_ticks();
}

/* Fails with "what, page N: bad word W" when mem does not hold the pattern. */
static void verify_region(const char *what, const void *mem, size_t len, uint64_t seed)
{
	long bad = check_words(mem, len, seed, 0);

	if (bad >= 0)
		wl_fail("%s, page %ld: bad word %ld", what, bad / (long)WORDS, bad % (long)WORDS);
}

static void verify_all(void)
{
	long bad;

	bad = check_words(p_mem, p_pages * PAGE, P_SEED, 0);
	if (bad >= 0)
		wl_fail("P page %ld: bad word %ld", bad / (long)WORDS, bad % (long)WORDS);
	else if (wl_checksum(p_mem, p_pages * PAGE) != p_sum)
		wl_fail("P: checksum mismatch");
	verify_region("D first half", d_mem, HALF_LEN, d_head_seed);
	verify_region("D second half", d_mem + HALF_LEN, HALF_LEN, D_TAIL_SEED);
	verify_region("R", r_slot[r_cur], R_LEN, R_SEED);
	verify_region("U first half", u_mem, HALF_LEN, U_HEAD_SEED);
	verify_region("U second half", u_mem + HALF_LEN, HALF_LEN, u_tail_seed);
	verify_region("F", f_mem, F_LEN, F_SEED);

	wl_expect_perms("P", p_mem, "rw-p");
	wl_expect_perms("D", d_mem, "rw-p");
	wl_expect_perms("R", r_slot[r_cur], "rw-p");
	wl_expect_perms("R's empty slot", r_slot[!r_cur], "---p");
	wl_expect_perms("U first half", u_mem, "rw-p");
	wl_expect_perms("U second half", u_mem + HALF_LEN, "rw-p");
	wl_expect_perms("F", f_mem, "rw-p");
}

int main(int argc, char **argv)
{
	unsigned long size_mib = 256;
	uint8_t *r_area;

	wl_init(argc, argv);
	if (argc > 3) {
		fprintf(stderr, "usage: wl_lazy STATEDIR [SIZE_MIB]\n");
		return 2;
	}
	if (argc > 2) {
		char *end;

		size_mib = strtoul(argv[2], &end, 10);
		if (*end || size_mib < 1 || size_mib > (1UL << 20)) {
			fprintf(stderr, "SIZE_MIB must be a number from 1 to %lu\n", 1UL << 20);
			return 2;
		}
	}
	wl_path(churn_path, sizeof(churn_path), "churn");

	p_pages = size_mib * MIB / PAGE;
	p_chunks = (p_pages + CHUNK_PAGES - 1) / CHUNK_PAGES;
	p_mem = guarded_map(p_pages * PAGE);
	fill_words(p_mem, p_pages * PAGE, P_SEED, 0);
	p_sum = wl_checksum(p_mem, p_pages * PAGE);
	p_chunk_sum = guarded_map((p_chunks * sizeof(uint64_t) + PAGE - 1) / PAGE * PAGE);
	for (size_t c = 0; c < p_chunks; c++)
		p_chunk_sum[c] = wl_checksum(p_mem + c * CHUNK_PAGES * PAGE, chunk_pages(c) * PAGE);

	d_mem = guarded_map(D_LEN);
	fill_words(d_mem, HALF_LEN, D_HEAD_SEED, 0);
	fill_words(d_mem + HALF_LEN, HALF_LEN, D_TAIL_SEED, 0);

	/* [guard][slot 0][guard][slot 1][guard], all PROT_NONE; R starts in slot 0. */
	r_area = mmap(NULL, 2 * R_LEN + 3 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (r_area == MAP_FAILED) {
		fprintf(stderr, "mmap R slots: %s\n", strerror(errno));
		return 2;
	}
	r_slot[0] = r_area + PAGE;
	r_slot[1] = r_area + 2 * PAGE + R_LEN;
	if (mprotect(r_slot[0], R_LEN, PROT_READ | PROT_WRITE)) {
		fprintf(stderr, "mprotect R: %s\n", strerror(errno));
		return 2;
	}
	fill_words(r_slot[0], R_LEN, R_SEED, 0);

	u_mem = guarded_map(U_LEN);
	fill_words(u_mem, HALF_LEN, U_HEAD_SEED, 0);
	fill_words(u_mem + HALF_LEN, HALF_LEN, U_TAIL_SEED, 0);

	f_mem = guarded_map(F_LEN);
	fill_words(f_mem, F_LEN, F_SEED, 0);

	write_churn_ticks();
	wl_ready();
	while (!wl_stop) {
		check_p_window(p_window, WINDOW_PAGES);
		p_window = (p_window + WINDOW_PAGES) % p_pages;
		if (access(churn_path, F_OK) == 0)
			churn();
		wl_tick();
		wl_sleep_ms(TICK_MS);
	}

	verify_all();
	write_churn_ticks();
	wl_finish();
}
