/*
 * scan_walk SIZE_MIB: the cost of the pre-copy window's final page-table walk, measured alone.
 *
 * Maps SIZE_MIB of private anonymous memory (no THP), touches every page, registers it for
 * userfaultfd async write-protect (WP_ASYNC), protects it all with one PAGEMAP_SCAN
 * (WP_MATCHING), then five times: writes 1 % of the pages at random and times
 *   - the read-only scan fastcr runs inside the freeze (PM_SCAN_CHECK_WPASYNC), on one thread
 *     and split over two,
 *   - a scan that also re-protects (WP_MATCHING), as a pre-copy round does.
 * It prints milliseconds and the regions found. Used for the "final scan" figures of
 * docs/benchmarks.md:
 *
 *   gcc -O2 -pthread -o /tmp/scan_walk benches/probes/scan_walk.c
 *   /tmp/scan_walk 1024; /tmp/scan_walk 4096
 *
 * The structures and ioctl numbers are spelled out because older uapi headers lack them.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct region {
	uint64_t start, end, categories;
};
struct scan_arg {
	uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
	uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define SCAN_IOCTL _IOWR('f', 16, struct scan_arg)
#define WP_MATCHING 1
#define CHECK_WPASYNC 2
#define IS_WRITTEN 2
#define FEATURE_WP_ASYNC (1 << 15)
#define VEC_LEN 4096

static int pagemap;

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* Written regions of [start, end); exits on error. */
static long scan(uint64_t start, uint64_t end, uint64_t flags)
{
	struct region *vec = malloc(sizeof(*vec) * VEC_LEN);
	long found = 0;
	while (start < end) {
		struct scan_arg a = {
			.size = sizeof(a), .flags = flags, .start = start, .end = end,
			.vec = (uintptr_t)vec, .vec_len = VEC_LEN,
			.category_mask = IS_WRITTEN, .return_mask = IS_WRITTEN,
		};
		long n = ioctl(pagemap, SCAN_IOCTL, &a);
		if (n < 0) {
			perror("PAGEMAP_SCAN");
			exit(1);
		}
		found += n;
		if (a.walk_end <= start)
			break;
		start = a.walk_end;
	}
	free(vec);
	return found;
}

struct half {
	uint64_t start, end;
};

static void *scan_half(void *arg)
{
	struct half *h = arg;
	scan(h->start, h->end, CHECK_WPASYNC);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: scan_walk SIZE_MIB\n");
		return 2;
	}
	size_t len = (size_t)atol(argv[1]) << 20, pages = len / 4096;
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	madvise(mem, len, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < len; i += 4096)
		mem[i] = 1;
	int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	struct uffdio_api api = { .api = UFFD_API, .features = FEATURE_WP_ASYNC };
	struct uffdio_register reg = {
		.range = { (uintptr_t)mem, len }, .mode = UFFDIO_REGISTER_MODE_WP,
	};
	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) || ioctl(uffd, UFFDIO_REGISTER, &reg)) {
		perror("userfaultfd");
		return 1;
	}
	pagemap = open("/proc/self/pagemap", O_RDONLY);
	uint64_t start = (uintptr_t)mem, end = start + len;
	scan(start, end, WP_MATCHING | CHECK_WPASYNC);
	for (int round = 0; round < 5; round++) {
		srand(round);
		for (size_t i = 0; i < pages / 100; i++)
			mem[(size_t)(rand() % pages) * 4096] = 2;
		double t = now_ms();
		long regions = scan(start, end, CHECK_WPASYNC);
		double one = now_ms() - t;
		struct half second = { start + len / 2, end }, first = { start, start + len / 2 };
		pthread_t other;
		t = now_ms();
		pthread_create(&other, NULL, scan_half, &second);
		scan_half(&first);
		pthread_join(other, NULL);
		double two = now_ms() - t;
		t = now_ms();
		scan(start, end, WP_MATCHING | CHECK_WPASYNC);
		double wp = now_ms() - t;
		printf("%zu MiB: read-only %.2f ms on one thread, %.2f ms on two; "
		       "re-protecting %.2f ms; %ld regions\n",
		       len >> 20, one, two, wp, regions);
	}
	return 0;
}
