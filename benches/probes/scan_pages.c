/*
 * scan_pages SIZE_MIB N: what one scattered page costs the final pass of a pre-copy when the
 * final scan is limited to the hinted pages. Maps and touches SIZE_MIB MiB, then times N
 * single-page PAGEMAP_SCAN ioctls on random pages of it (the hinted scan), N getppid() calls
 * (the bare syscall cost), and one process_vm_readv of N random pages (the residue copy).
 *
 *   gcc -O2 -o /tmp/scan_pages benches/probes/scan_pages.c && /tmp/scan_pages 4096 300
 *
 * The structures are spelled out because the distribution's kernel headers predate
 * PAGEMAP_SCAN.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

struct page_region {
	uint64_t start, end, categories;
};

struct pm_scan_arg {
	uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
	uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE 4096UL

static double now_us(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s SIZE_MIB N\n", argv[0]);
		return 2;
	}
	size_t len = strtoul(argv[1], NULL, 10) << 20, pages = len / PAGE;
	int n = atoi(argv[2]);
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (mem == MAP_FAILED || n <= 0 || pages == 0) {
		perror("mmap");
		return 1;
	}
	madvise(mem, len, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < len; i += PAGE)
		mem[i] = 1;
	int fd = open("/proc/self/pagemap", O_RDONLY);
	struct page_region regions[16];
	double t0 = now_us();

	for (int i = 0; i < n; i++) {
		uint64_t at = (uint64_t)mem + (size_t)rand() % pages * PAGE;
		struct pm_scan_arg arg = {
			.size = sizeof(arg), .start = at, .end = at + PAGE,
			.vec = (uint64_t)regions, .vec_len = 16,
			.category_mask = PAGE_IS_PRESENT, .return_mask = PAGE_IS_PRESENT,
		};
		if (ioctl(fd, PAGEMAP_SCAN, &arg) < 0) {
			perror("PAGEMAP_SCAN");
			return 1;
		}
	}
	printf("single-page PAGEMAP_SCAN: %.2f us each\n", (now_us() - t0) / n);

	t0 = now_us();
	for (int i = 0; i < n; i++)
		getppid();
	printf("getppid: %.3f us each\n", (now_us() - t0) / n);

	struct iovec *local = calloc(n, sizeof(*local)), *remote = calloc(n, sizeof(*remote));
	char *dst = malloc((size_t)n * PAGE);

	if (!local || !remote || !dst)
		return 1;
	memset(dst, 0, (size_t)n * PAGE);
	for (int i = 0; i < n; i++) {
		local[i] = (struct iovec){ dst + (size_t)i * PAGE, PAGE };
		remote[i] = (struct iovec){ mem + (size_t)rand() % pages * PAGE, PAGE };
	}
	t0 = now_us();
	for (int done = 0; done < n;) {
		int k = n - done > 1024 ? 1024 : n - done;

		if (process_vm_readv(getpid(), local + done, k, remote + done, k, 0) < 0) {
			perror("process_vm_readv");
			return 1;
		}
		done += k;
	}
	printf("process_vm_readv of scattered pages: %.2f us per page\n", (now_us() - t0) / n);
	return 0;
}
