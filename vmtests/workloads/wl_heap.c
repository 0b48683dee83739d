/*
 * wl_heap STATEDIR [SIZE_MIB]: anonymous memory of every shape, plus vector
 * registers and TLS that must survive a checkpoint.
 *
 * - SIZE_MIB (default 256) MiB private anonymous, pattern-filled, checksummed;
 * - a brk heap extension with a pattern;
 * - 64 MiB never touched: must read as zero and must not be populated
 *   (smaps Rss) after restore;
 * - a region where every 3rd page is written, the rest never touched;
 * - two RW mappings with a PROT_NONE gap between them;
 * - a PROT_READ region with content (filled, then mprotect'ed);
 * - ymm0-3 (and zmm16-17 with AVX-512) hold known values across the sleeps,
 *   which are raw syscalls in the same asm block, so no libc call can clobber
 *   them: checks that the extended FPU state is restored;
 * - a __thread variable and fs_base: checks the TLS pointer.
 *
 * Every special region sits between PROT_NONE guards so that no VMA merges
 * with a neighbour, which keeps its smaps entry exact.
 */
#include "wl_common.h"

#include <asm/prctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#define PAGE 4096UL
#define MIB (1024UL * 1024UL)
#define UNTOUCHED_LEN (64 * MIB)
#define SPARSE_PAGES 48
#define GAP_LEN (4 * PAGE)
#define PAIR_LEN (16 * PAGE)
#define RO_LEN (8 * PAGE)
#define BRK_LEN (32 * PAGE)

static __thread uint64_t tls_value = 0x7153AD0C0FFEE123ULL;
static __thread uint64_t tls_runtime;

static uint8_t vec_in[6][64] __attribute__((aligned(64)));
static uint8_t vec_out[6][64] __attribute__((aligned(64)));
static int have_avx, have_avx512;

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

/*
 * Loads the vector registers, sleeps with a raw syscall, stores them back.
 * Nothing between the load and the store runs compiled C code.
 */
static void vector_sleep(const struct timespec *ts)
{
	long ret;

	if (have_avx512) {
		__asm__ volatile("vmovdqu (%[in]), %%ymm0\n\t"
				 "vmovdqu 64(%[in]), %%ymm1\n\t"
				 "vmovdqu 128(%[in]), %%ymm2\n\t"
				 "vmovdqu 192(%[in]), %%ymm3\n\t"
				 "vmovdqu64 256(%[in]), %%zmm16\n\t"
				 "vmovdqu64 320(%[in]), %%zmm17\n\t"
				 "syscall\n\t"
				 "vmovdqu %%ymm0, (%[out])\n\t"
				 "vmovdqu %%ymm1, 64(%[out])\n\t"
				 "vmovdqu %%ymm2, 128(%[out])\n\t"
				 "vmovdqu %%ymm3, 192(%[out])\n\t"
				 "vmovdqu64 %%zmm16, 256(%[out])\n\t"
				 "vmovdqu64 %%zmm17, 320(%[out])\n\t"
				 "vzeroupper"
				 : "=a"(ret)
				 : "0"((long)SYS_nanosleep), "D"(ts), "S"(0L), [in] "r"(vec_in),
				   [out] "r"(vec_out)
				 : "rcx", "r11", "memory", "xmm0", "xmm1", "xmm2", "xmm3");
		/* zmm16-17 are not clobbers: without -mavx512f gcc never uses them. */
	} else if (have_avx) {
		__asm__ volatile("vmovdqu (%[in]), %%ymm0\n\t"
				 "vmovdqu 64(%[in]), %%ymm1\n\t"
				 "vmovdqu 128(%[in]), %%ymm2\n\t"
				 "vmovdqu 192(%[in]), %%ymm3\n\t"
				 "syscall\n\t"
				 "vmovdqu %%ymm0, (%[out])\n\t"
				 "vmovdqu %%ymm1, 64(%[out])\n\t"
				 "vmovdqu %%ymm2, 128(%[out])\n\t"
				 "vmovdqu %%ymm3, 192(%[out])\n\t"
				 "vzeroupper"
				 : "=a"(ret)
				 : "0"((long)SYS_nanosleep), "D"(ts), "S"(0L), [in] "r"(vec_in),
				   [out] "r"(vec_out)
				 : "rcx", "r11", "memory", "xmm0", "xmm1", "xmm2", "xmm3");
	} else {
		__asm__ volatile("movdqu (%[in]), %%xmm0\n\t"
				 "movdqu 64(%[in]), %%xmm1\n\t"
				 "movdqu 128(%[in]), %%xmm2\n\t"
				 "movdqu 192(%[in]), %%xmm3\n\t"
				 "syscall\n\t"
				 "movdqu %%xmm0, (%[out])\n\t"
				 "movdqu %%xmm1, 64(%[out])\n\t"
				 "movdqu %%xmm2, 128(%[out])\n\t"
				 "movdqu %%xmm3, 192(%[out])"
				 : "=a"(ret)
				 : "0"((long)SYS_nanosleep), "D"(ts), "S"(0L), [in] "r"(vec_in),
				   [out] "r"(vec_out)
				 : "rcx", "r11", "memory", "xmm0", "xmm1", "xmm2", "xmm3");
	}
	(void)ret;
}

static void check_vectors(void)
{
	/* Bytes each register kept: xmm 16, ymm 32, zmm 64. */
	size_t width = have_avx ? 32 : 16;

	for (int r = 0; r < 4; r++)
		if (memcmp(vec_in[r], vec_out[r], width))
			wl_fail("vector register %d changed across a sleep (%s)", r,
				have_avx ? "ymm" : "xmm");
	if (have_avx512)
		for (int r = 4; r < 6; r++)
			if (memcmp(vec_in[r], vec_out[r], 64))
				wl_fail("zmm%d changed across a sleep", 12 + r);
	memset(vec_out, 0, sizeof(vec_out));
}

static long smaps_rss_kib(const void *start)
{
	char line[512], want[32];
	FILE *f = fopen("/proc/self/smaps", "re");
	int in = 0;
	long rss = -1;

	if (!f)
		return -1;
	snprintf(want, sizeof(want), "%lx-", (unsigned long)start);
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b;
		char perms[5];

		if (sscanf(line, "%lx-%lx %4s", &a, &b, perms) == 3)
			in = !strncmp(line, want, strlen(want));
		else if (in && !strncmp(line, "Rss:", 4)) {
			rss = strtol(line + 4, NULL, 10);
			break;
		}
	}
	fclose(f);
	return rss;
}

static unsigned long get_fs_base(void)
{
	unsigned long base = 0;

	syscall(SYS_arch_prctl, ARCH_GET_FS, &base);
	return base;
}

int main(int argc, char **argv)
{
	size_t big_len;
	uint8_t *big, *brk_mem, *brk_end, *untouched, *sparse, *pair, *ro;
	uint64_t big_sum;
	unsigned long fs_base;
	long untouched_rss_before;
	struct timespec tick = { 0, 50 * 1000000L };

	wl_init(argc, argv);
	big_len = (argc > 2 ? strtoul(argv[2], NULL, 10) : 256) * MIB;
	if (big_len == 0)
		big_len = MIB;

	__builtin_cpu_init();
	have_avx = __builtin_cpu_supports("avx");
	have_avx512 = have_avx && __builtin_cpu_supports("avx512f");
	for (size_t i = 0; i < sizeof(vec_in); i++)
		((uint8_t *)vec_in)[i] = (uint8_t)(i * 37 + 11);

	big = mmap(NULL, big_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (big == MAP_FAILED) {
		fprintf(stderr, "mmap %zu: %s\n", big_len, strerror(errno));
		return 2;
	}
	wl_fill(big, big_len, 0x1111);
	big_sum = wl_checksum(big, big_len);

	brk_mem = sbrk((intptr_t)BRK_LEN);
	if (brk_mem == (void *)-1) {
		fprintf(stderr, "sbrk: %s\n", strerror(errno));
		return 2;
	}
	wl_fill(brk_mem, BRK_LEN, 0x2222);

	untouched = guarded_map(UNTOUCHED_LEN);
	untouched_rss_before = smaps_rss_kib(untouched);

	sparse = guarded_map(SPARSE_PAGES * PAGE);
	for (size_t i = 0; i < SPARSE_PAGES; i += 3)
		wl_fill(sparse + i * PAGE, PAGE, 0x3333 + i);

	/* pair: [RW PAIR_LEN][PROT_NONE GAP_LEN][RW PAIR_LEN] */
	pair = guarded_map(2 * PAIR_LEN + GAP_LEN);
	mprotect(pair + PAIR_LEN, GAP_LEN, PROT_NONE);
	wl_fill(pair, PAIR_LEN, 0x4444);
	wl_fill(pair + PAIR_LEN + GAP_LEN, PAIR_LEN, 0x5555);

	ro = guarded_map(RO_LEN);
	wl_fill(ro, RO_LEN, 0x6666);
	if (mprotect(ro, RO_LEN, PROT_READ)) {
		fprintf(stderr, "mprotect ro: %s\n", strerror(errno));
		return 2;
	}

	tls_runtime = 0xABCDEF0123456789ULL ^ (uint64_t)wl_pid;
	fs_base = get_fs_base();
	/* After the setup's stdio calls, which may grow malloc's brk arena. */
	brk_end = sbrk(0);

	wl_ready();
	while (!wl_stop) {
		vector_sleep(&tick);
		check_vectors();
		wl_tick();
	}

	/* Verify: the break first (stdio below mallocs), smaps before reading. */
	if (sbrk(0) != brk_end)
		wl_fail("program break moved: %p, want %p", sbrk(0), brk_end);
	if (untouched_rss_before != 0)
		wl_fail("untouched region had Rss %ld KiB before the dump", untouched_rss_before);
	{
		long rss = smaps_rss_kib(untouched);

		/*
		 * A restore must not populate memory that was never touched. A few
		 * pages are forgiven; writing the whole region (64 MiB) is not.
		 */
		if (rss < 0)
			wl_fail("untouched region: no smaps entry at %p", (void *)untouched);
		else if (rss > (long)(UNTOUCHED_LEN / 16 / 1024))
			wl_fail("untouched region is populated: Rss %ld KiB", rss);
	}
	for (size_t i = 0; i < UNTOUCHED_LEN; i += 8)
		if (*(uint64_t *)(untouched + i)) {
			wl_fail("untouched region: nonzero at offset %zu", i);
			break;
		}
	{
		long bad = wl_check_fill(big, big_len, 0x1111);

		if (bad >= 0)
			wl_fail("big region: bad word at offset %ld", bad * 8);
		else if (wl_checksum(big, big_len) != big_sum)
			wl_fail("big region: checksum mismatch");
	}
	if (wl_check_fill(brk_mem, BRK_LEN, 0x2222) >= 0)
		wl_fail("brk region: pattern mismatch");
	for (size_t i = 0; i < SPARSE_PAGES; i++) {
		if (i % 3 == 0) {
			if (wl_check_fill(sparse + i * PAGE, PAGE, 0x3333 + i) >= 0)
				wl_fail("sparse region: written page %zu mismatch", i);
		} else {
			for (size_t j = 0; j < PAGE; j++)
				if (sparse[i * PAGE + j]) {
					wl_fail("sparse region: page %zu not zero", i);
					break;
				}
		}
	}
	if (wl_check_fill(pair, PAIR_LEN, 0x4444) >= 0)
		wl_fail("region before the PROT_NONE gap: pattern mismatch");
	if (wl_check_fill(pair + PAIR_LEN + GAP_LEN, PAIR_LEN, 0x5555) >= 0)
		wl_fail("region after the PROT_NONE gap: pattern mismatch");
	wl_expect_perms("region before the gap", pair, "rw-p");
	wl_expect_perms("PROT_NONE gap", pair + PAIR_LEN, "---p");
	wl_expect_perms("region after the gap", pair + PAIR_LEN + GAP_LEN, "rw-p");
	wl_expect_perms("PROT_READ region", ro, "r--p");
	if (wl_check_fill(ro, RO_LEN, 0x6666) >= 0)
		wl_fail("PROT_READ region: pattern mismatch");
	if (tls_value != 0x7153AD0C0FFEE123ULL)
		wl_fail("__thread initialised value changed");
	if (tls_runtime != (0xABCDEF0123456789ULL ^ (uint64_t)wl_pid))
		wl_fail("__thread runtime value changed");
	if (get_fs_base() != fs_base)
		wl_fail("fs_base changed: %#lx, was %#lx", get_fs_base(), fs_base);
	wl_finish();
}
