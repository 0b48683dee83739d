/*
 * wl_dirty STATEDIR SIZE_MIB PERMILLE_PER_100MS [churn|max]: keeps dirtying
 * memory at a known rate and can verify its memory at any instant, which is
 * what proves that a pre-copy image holds exactly the frozen moment.
 *
 * - SIZE_MIB MiB private anonymous. The first 15/16 ("hot") are dirtied; the
 *   last 1/16 ("cold") is filled once and checksummed, never written again.
 * - Write number k goes to hot page f(k) = (k mod HOT) * STRIDE mod HOT (a
 *   permutation: STRIDE is coprime with HOT). A write gives the page its next
 *   generation g = expected[p] + 1 and stores in every 8-byte word i
 *   (g << 32 | p) ^ mix[i]; only then expected[p] = g and total_writes = k+1.
 *   expected[] lives in its own anonymous mapping.
 * - PERMILLE_PER_100MS: writes per 100 ms = SIZE pages * PERMILLE / 1000,
 *   spread evenly (a batch every 2 ms). A backlog of more than 100 ms (the
 *   process was stopped, or checkpointed and restored) is dropped instead of
 *   being caught up in a burst.
 * - "max": dirty as fast as possible instead (the rate is ignored).
 * - "churn": every ~20 ms, munmap a small region and mmap a new one with a
 *   pattern, and mremap another one to a new place; all are checked at the end.
 * - "spawn": as the rate mode, and once STATEDIR/spawn exists (a test creates
 *   it while a pre-copy runs), fork a child and start a thread, then write
 *   STATEDIR/spawned ("CHILD_PID\n"). The child goes on dirtying its own copy
 *   of the memory on the same schedule (it writes no STATEDIR file); on
 *   SIGTERM it verifies its memory and exits 0, or 1 after printing why. The
 *   thread rewrites pages of a region of its own (T, 1024 pages, with its own
 *   generations) 16 pages every 2 ms. On SIGTERM the parent stops and joins
 *   the thread, verifies T, sends SIGTERM to the child and requires exit 0.
 * - STATEDIR/progress, rewritten every tick (every 5 ms in "max" mode, where it
 *   measures the write throughput): "MONOTONIC_NS TOTAL_WRITES".
 * - STATEDIR/layout, written once: "HOT_START HOT_PAGES" (hex address, pages).
 *
 * On SIGTERM no write is in flight (the flag is checked between writes), so
 * every hot page must hold exactly generation expected[p]: an older one means a
 * write was lost (the pre-copy missed it). expected[] itself must equal what
 * the deterministic schedule gives for total_writes, and its sum must be
 * total_writes: a lost write to expected[] fails too.
 */
#include "wl_common.h"

#include <pthread.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define PAGE 4096UL
#define WORDS (PAGE / 8)
#define MIB (1024UL * 1024UL)
#define BATCH_MS 2
#define TICK_NS (50 * 1000000LL)
#define MAX_PROGRESS_NS (5 * 1000000LL)
#define CHURN_NS (20 * 1000000LL)
#define CHURN_SLOTS 16
#define MIX_SEED 0xD1B7ULL

enum mode { MODE_RATE, MODE_MAX, MODE_CHURN, MODE_SPAWN };

static uint64_t mix[WORDS];
static uint8_t *region;
static uint8_t *hot, *cold;
static size_t total_pages, hot_pages, cold_len;
static uint32_t *expected;
static size_t expected_len;
static uint64_t stride;
static volatile uint64_t total_writes;
static uint64_t cold_sum;

struct slot {
	uint8_t *addr;
	size_t len;
	uint64_t seed;
	int moved;
};
static struct slot slots[CHURN_SLOTS];
static uint64_t churn_steps, churn_moves;

#define T_PAGES 1024
#define T_BATCH 16
static uint8_t *t_region;
static uint32_t t_expected[T_PAGES];
static uint64_t t_writes;
static pthread_t t_thread;
static pid_t child = -1;
static int is_child;

static int64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static uint64_t gcd(uint64_t a, uint64_t b)
{
	while (b) {
		uint64_t t = a % b;

		a = b;
		b = t;
	}
	return a;
}

static size_t page_of(uint64_t k)
{
	return (size_t)(((k % hot_pages) * stride) % hot_pages);
}

static inline uint64_t tag_of(uint32_t gen, size_t page)
{
	return ((uint64_t)gen << 32) | (uint64_t)page;
}

static void write_page(size_t page, uint32_t gen)
{
	uint64_t *w = (uint64_t *)(hot + page * PAGE);
	uint64_t tag = tag_of(gen, page);

	for (size_t i = 0; i < WORDS; i++)
		w[i] = tag ^ mix[i];
}

static void dirty_one(void)
{
	uint64_t k = total_writes;
	size_t p = page_of(k);
	uint32_t gen = expected[p] + 1;

	write_page(p, gen);
	/* Compiler barriers: the page, then expected[], then the total. */
	__asm__ volatile("" ::: "memory");
	expected[p] = gen;
	__asm__ volatile("" ::: "memory");
	total_writes = k + 1;
}

static void *map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		fprintf(stderr, "mmap %zu: %s\n", len, strerror(errno));
		exit(2);
	}
	return p;
}

/* ---- churn: small regions unmapped, mapped and moved while tracked ---- */

static void slot_new(struct slot *s, uint64_t seed)
{
	s->len = (1 + seed % 5) * PAGE;
	s->seed = seed;
	s->moved = 0;
	s->addr = mmap(NULL, s->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (s->addr == MAP_FAILED) {
		s->addr = NULL;
		wl_fail("churn: mmap: %s", strerror(errno));
		return;
	}
	wl_fill(s->addr, s->len, s->seed);
}

static void slot_move(struct slot *s)
{
	/* A fresh reservation is the new place: MREMAP_FIXED replaces it. */
	void *dst = mmap(NULL, s->len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	void *moved;

	if (dst == MAP_FAILED) {
		wl_fail("churn: reserve: %s", strerror(errno));
		return;
	}
	moved = mremap(s->addr, s->len, s->len, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	if (moved == MAP_FAILED) {
		wl_fail("churn: mremap: %s", strerror(errno));
		munmap(dst, s->len);
		return;
	}
	s->addr = moved;
	s->moved = 1;
	/* Dirty the moved region once more: its first word now counts the moves. */
	((uint64_t *)s->addr)[0] = wl_pattern(s->seed, 0) ^ ++churn_moves;
}

static void churn_step(void)
{
	uint64_t c = churn_steps++;
	struct slot *gone = &slots[c % CHURN_SLOTS];
	struct slot *move = &slots[(c + CHURN_SLOTS / 2) % CHURN_SLOTS];

	if (gone->addr && munmap(gone->addr, gone->len))
		wl_fail("churn: munmap: %s", strerror(errno));
	slot_new(gone, 0xC0DE0000ULL + c);
	if (move->addr)
		slot_move(move);
}

static void churn_verify(void)
{
	uint64_t moves_seen = 0;

	for (int i = 0; i < CHURN_SLOTS; i++) {
		struct slot *s = &slots[i];
		uint64_t *w;

		if (!s->addr) {
			wl_fail("churn slot %d has no region", i);
			continue;
		}
		wl_expect_perms("churn region", s->addr, "rw-p");
		w = (uint64_t *)s->addr;
		if (s->moved) {
			uint64_t m = w[0] ^ wl_pattern(s->seed, 0);

			if (m == 0 || m > churn_moves)
				wl_fail("churn slot %d: move stamp %#llx (moves %llu)", i,
					(unsigned long long)m, (unsigned long long)churn_moves);
			if (m > moves_seen)
				moves_seen = m;
			for (size_t j = 1; j < s->len / 8; j++)
				if (w[j] != wl_pattern(s->seed, j)) {
					wl_fail("churn slot %d (moved): bad word %zu", i, j);
					break;
				}
		} else {
			long bad = wl_check_fill(s->addr, s->len, s->seed);

			if (bad >= 0)
				wl_fail("churn slot %d: bad word %ld", i, bad);
		}
	}
	if (churn_steps < 2)
		wl_fail("churn: only %llu steps ran", (unsigned long long)churn_steps);
	if (churn_moves && moves_seen != churn_moves)
		wl_fail("churn: latest move stamp %llu, want %llu", (unsigned long long)moves_seen,
			(unsigned long long)churn_moves);
}

/* ---- verification ---- */

static void verify_memory(void)
{
	uint64_t total = total_writes, sum = 0;
	size_t bad_pages = 0;

	/* expected[] must be exactly what the schedule gives for total_writes. */
	for (uint64_t r = 0; r < hot_pages; r++) {
		size_t p = page_of(r);
		uint64_t want = total > r ? (total - 1 - r) / hot_pages + 1 : 0;

		sum += expected[p];
		if (expected[p] != want) {
			wl_fail("expected[%zu] is %u, the schedule says %llu after %llu writes", p,
				expected[p], (unsigned long long)want, (unsigned long long)total);
			break;
		}
	}
	if (sum != total)
		wl_fail("expected[] sums to %llu, total_writes is %llu", (unsigned long long)sum,
			(unsigned long long)total);

	for (size_t p = 0; p < hot_pages; p++) {
		const uint64_t *w = (const uint64_t *)(hot + p * PAGE);
		uint64_t tag = tag_of(expected[p], p);

		for (size_t i = 0; i < WORDS; i++) {
			if (w[i] == (tag ^ mix[i]))
				continue;
			if (!bad_pages) {
				uint64_t seen = w[i] ^ mix[i];

				if ((seen & 0xffffffffULL) == p && (seen >> 32) < expected[p])
					wl_fail("hot page %zu is stale: word %zu has generation %llu, "
						"expected %u (a write was lost)",
						p, i, (unsigned long long)(seen >> 32), expected[p]);
				else
					wl_fail("hot page %zu: word %zu is %#llx, expected generation %u",
						p, i, (unsigned long long)w[i], expected[p]);
			}
			bad_pages++;
			break;
		}
	}
	if (bad_pages)
		fprintf(stderr, "%zu bad hot pages\n", bad_pages);

	{
		long bad = wl_check_fill(cold, cold_len, 0xC01D);

		if (bad >= 0)
			wl_fail("cold region: bad word at offset %ld", bad * 8);
		else if (wl_checksum(cold, cold_len) != cold_sum)
			wl_fail("cold region: checksum mismatch");
	}
}

/* The spawned thread: pages of T in turn, each with its next generation. */
static void *t_loop(void *arg)
{
	(void)arg;
	while (!wl_stop) {
		for (int i = 0; i < T_BATCH; i++) {
			size_t p = t_writes % T_PAGES;
			uint32_t g = t_expected[p] + 1;
			uint64_t *w = (uint64_t *)(t_region + p * PAGE);

			for (size_t j = 0; j < WORDS; j++)
				w[j] = ((uint64_t)g << 32 | (0x7000000 + p)) ^ mix[j];
			t_expected[p] = g;
			t_writes++;
		}
		wl_sleep_ms(BATCH_MS);
	}
	return NULL;
}

static void t_verify(void)
{
	uint64_t sum = 0;

	for (size_t p = 0; p < T_PAGES; p++) {
		const uint64_t *w = (const uint64_t *)(t_region + p * PAGE);

		sum += t_expected[p];
		for (size_t j = 0; j < WORDS; j++)
			if (w[j] != (((uint64_t)t_expected[p] << 32 | (0x7000000 + p)) ^ mix[j])) {
				wl_fail("thread page %zu word %zu holds %llx, generation %u expected", p,
					j, (unsigned long long)w[j], t_expected[p]);
				return;
			}
	}
	if (sum != t_writes)
		wl_fail("thread generations sum to %llu, %llu writes", (unsigned long long)sum,
			(unsigned long long)t_writes);
}

/* Forks the child and starts the thread (see "spawn" above). */
static void spawn(void)
{
	char buf[32];
	int n;

	child = fork();
	if (child < 0)
		wl_fail("fork: %s", strerror(errno));
	if (child == 0) {
		is_child = 1;
		return;
	}
	t_region = map_anon(T_PAGES * PAGE);
	if (pthread_create(&t_thread, NULL, t_loop, NULL))
		wl_fail("pthread_create failed");
	n = snprintf(buf, sizeof(buf), "%d\n", (int)child);
	if (wl_write_file("spawned", buf, (size_t)n))
		wl_fail("cannot write spawned: %s", strerror(errno));
}

/* The parent's side of the end of "spawn" mode. */
static void spawn_verify(void)
{
	int status = 0;

	if (child <= 0) {
		wl_fail("spawn mode: nothing was spawned (no STATEDIR/spawn)");
		return;
	}
	pthread_join(t_thread, NULL);
	t_verify();
	if (t_writes == 0)
		wl_fail("the spawned thread never wrote");
	kill(child, SIGTERM);
	while (waitpid(child, &status, 0) < 0)
		if (errno != EINTR) {
			wl_fail("waitpid(child): %s", strerror(errno));
			return;
		}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		wl_fail("the spawned child ended with status %#x", status);
}

static void write_progress(void)
{
	char buf[64];
	int n = snprintf(buf, sizeof(buf), "%lld %llu\n", (long long)mono_ns(),
			 (unsigned long long)total_writes);

	if (n < 0 || wl_publish("progress", buf))
		wl_fail("cannot write progress: %s", strerror(errno));
}

int main(int argc, char **argv)
{
	enum mode mode = MODE_RATE;
	uint64_t size_mib, permille, per_100ms, base_writes;
	int64_t base_ns, last_tick, last_churn, last_progress;
	char buf[64];
	int n;

	wl_init(argc, argv);
	if (argc < 4) {
		fprintf(stderr, "usage: wl_dirty STATEDIR SIZE_MIB PERMILLE_PER_100MS [churn|max]\n");
		return 2;
	}
	size_mib = strtoull(argv[2], NULL, 10);
	permille = strtoull(argv[3], NULL, 10);
	if (argc > 4 && !strcmp(argv[4], "churn"))
		mode = MODE_CHURN;
	else if (argc > 4 && !strcmp(argv[4], "max"))
		mode = MODE_MAX;
	else if (argc > 4 && !strcmp(argv[4], "spawn"))
		mode = MODE_SPAWN;
	else if (argc > 4) {
		fprintf(stderr, "unknown mode %s\n", argv[4]);
		return 2;
	}
	if (size_mib < 1 || permille > 1000) {
		fprintf(stderr, "SIZE_MIB must be >= 1 and PERMILLE <= 1000\n");
		return 2;
	}

	for (size_t i = 0; i < WORDS; i++)
		mix[i] = wl_pattern(MIX_SEED, i);
	total_pages = size_mib * MIB / PAGE;
	cold_len = total_pages / 16 * PAGE;
	hot_pages = total_pages - cold_len / PAGE;
	region = map_anon(total_pages * PAGE);
	hot = region;
	cold = region + hot_pages * PAGE;
	expected_len = (hot_pages * sizeof(uint32_t) + PAGE - 1) / PAGE * PAGE;
	expected = map_anon(expected_len);
	for (stride = hot_pages / 2 + 1 + (hot_pages / 7) * 2; gcd(stride % hot_pages, hot_pages) != 1;
	     stride++)
		;
	stride %= hot_pages;
	if (hot_pages == 1)
		stride = 0;
	for (size_t p = 0; p < hot_pages; p++)
		write_page(p, 0);
	wl_fill(cold, cold_len, 0xC01D);
	cold_sum = wl_checksum(cold, cold_len);
	if (mode == MODE_CHURN)
		for (int i = 0; i < CHURN_SLOTS; i++)
			slot_new(&slots[i], 0xA110C000ULL + (uint64_t)i);

	n = snprintf(buf, sizeof(buf), "%lx %zu\n", (unsigned long)hot, hot_pages);
	if (wl_write_file("layout", buf, (size_t)n)) {
		fprintf(stderr, "cannot write layout\n");
		return 2;
	}
	write_progress();

	per_100ms = total_pages * permille / 1000;
	base_ns = last_tick = last_churn = last_progress = mono_ns();
	base_writes = 0;
	wl_ready();
	while (!wl_stop) {
		int64_t now = mono_ns();

		if (now - last_tick >= TICK_NS && !is_child) {
			wl_tick();
			write_progress();
			last_tick = now;
			if (mode == MODE_SPAWN && child < 0) {
				char path[4200];

				wl_path(path, sizeof(path), "spawn");
				if (access(path, F_OK) == 0)
					spawn();
			}
		}
		if (mode == MODE_CHURN && now - last_churn >= CHURN_NS) {
			churn_step();
			last_churn = now;
		}
		if (mode == MODE_MAX) {
			if (now - last_progress >= MAX_PROGRESS_NS) {
				write_progress();
				last_progress = now;
			}
			for (int i = 0; i < 256 && !wl_stop; i++)
				dirty_one();
			continue;
		}
		if (per_100ms) {
			uint64_t due = base_writes +
				       (uint64_t)((__int128)(now - base_ns) * per_100ms / 100000000LL);

			if (due > total_writes + per_100ms) {
				/* Stopped for a while: drop the backlog, keep the rate. */
				base_ns = now;
				base_writes = total_writes;
				due = total_writes;
			}
			while (total_writes < due && !wl_stop)
				dirty_one();
		}
		wl_sleep_ms(BATCH_MS);
	}

	verify_memory();
	if (is_child) {
		if (wl_failure[0])
			fprintf(stderr, "wl_dirty child: FAIL: %s\n", wl_failure);
		_exit(wl_failure[0] ? 1 : 0);
	}
	if (mode == MODE_SPAWN)
		spawn_verify();
	if (mode == MODE_CHURN)
		churn_verify();
	if (mode != MODE_RATE || per_100ms)
		if (total_writes == 0)
			wl_fail("no page was ever dirtied");
	wl_finish();
}
