/*
 * wl_shmem STATEDIR: a parent and a child sharing memory that only exists as
 * open or mapped objects.
 *
 * State built by the parent before the fork (so the child inherits it all):
 * - A: 4 pages of MAP_SHARED|MAP_ANONYMOUS memory, page i filled with pattern
 *   seed 100+i;
 * - M: memfd "wl-shmem" (MFD_CLOEXEC|MFD_ALLOW_SEALING) at fd 30, 1 MiB long,
 *   data only in its first 64 KiB (pattern seed 7, written through the fd) and
 *   in its last page (seed 8) — the rest is a hole; sealed F_SEAL_SHRINK |
 *   F_SEAL_GROW; offset 1234; mapped MAP_SHARED twice: the first 64 KiB at
 *   offset 0 (MA) and 2 pages at offset 16 KiB (MB);
 * - N: memfd "wl-plain" (no flags: not close-on-exec, sealing not allowed) at
 *   fd 31, 3000 bytes of seed 9, offset 3000, not mapped;
 * - S: memfd "wl-sealed" at fd 32, 2 pages of seed 10, sealed against writes
 *   (F_SEAL_WRITE, then F_SEAL_SEAL), mapped MAP_SHARED read-only (MS).
 * Then the child is forked; STATEDIR/child-pid holds its pid. While running,
 * each process writes its own counter into its own word of A (parent: word 0 of
 * page 3, child: word 1) and into its own word of MA (words at 40000, 40008).
 *
 * Checked by each process on SIGTERM (the parent sends it to the child after
 * its own checks): contents of A, M (through the fd and both mappings), N;
 * sizes, seals, names, fd offsets and flags; in one process a write through MA
 * is seen through MB and the fd. Then the handshake that proves the two
 * processes share one object each: the parent writes a token into A and
 * through M's fd; the child must see both (M's through its mapping), and
 * answers with a token into A and through its mapping of M, which the parent
 * must see (M's through its fd). The child writes STATEDIR/result-child and
 * exits 0 or 1; the parent quotes it on failure.
 *
 * With "sysv" the parent also attaches a SysV shared memory segment (removed
 * with IPC_RMID at once, so it goes when the process does), which a dump must
 * refuse.
 */
#include "wl_common.h"

#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/wait.h>

#define PG 4096UL
#define A_PAGES 4
#define M_SIZE (1024 * 1024UL)
#define M_DATA (64 * 1024UL)
#define M_FD 30
#define N_FD 31
#define N_LEN 3000
#define S_FD 32
#define S_SEALS (F_SEAL_WRITE | F_SEAL_SEAL)
#define M_SEALS (F_SEAL_SHRINK | F_SEAL_GROW)
#define COUNTERS_OFF (A_PAGES - 1) * PG
#define MA_COUNTERS 40000
#define TOKEN_A1 0x5ea1ed0000000001ULL
#define TOKEN_A2 0x5ea1ed0000000002ULL
#define TOKEN_M1 0x5ea1ed0000000003ULL
#define TOKEN_M2 0x5ea1ed0000000004ULL
#define HANDSHAKE_MS 20000

static uint8_t *A, *MA, *MB, *MS;
static const char *role = "parent";
static pid_t child;

static long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static volatile uint64_t *a_word(size_t i)
{
	return (volatile uint64_t *)(A + COUNTERS_OFF) + i;
}

static volatile uint64_t *ma_word(size_t off)
{
	return (volatile uint64_t *)(MA + off);
}

static void check_fd(int fd, const char *name, off_t pos, int want_fdflags)
{
	char link[64], target[256];
	ssize_t n;

	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, target, sizeof(target) - 1);
	target[n < 0 ? 0 : n] = 0;
	if (strcmp(target, name))
		wl_fail("%s: fd %d is %s, want %s", role, fd, target, name);
	if (lseek(fd, 0, SEEK_CUR) != pos)
		wl_fail("%s: fd %d offset %lld, want %lld", role, fd, (long long)lseek(fd, 0, SEEK_CUR),
			(long long)pos);
	if (fcntl(fd, F_GETFD) != want_fdflags)
		wl_fail("%s: fd %d F_GETFD %d, want %d", role, fd, fcntl(fd, F_GETFD), want_fdflags);
	if ((fcntl(fd, F_GETFL) & O_ACCMODE) != O_RDWR)
		wl_fail("%s: fd %d is not O_RDWR", role, fd);
}

/* Everything that does not change while the processes run. */
static void check_static(void)
{
	static uint8_t buf[M_DATA];
	struct stat st;

	for (int i = 0; i < A_PAGES - 1; i++)
		if (wl_check_fill(A + i * PG, PG, 100 + i) >= 0)
			wl_fail("%s: page %d of the shared anonymous memory lost its pattern", role, i);
	check_fd(M_FD, "/memfd:wl-shmem (deleted)", 1234, FD_CLOEXEC);
	check_fd(N_FD, "/memfd:wl-plain (deleted)", N_LEN, 0);
	if (fstat(M_FD, &st) || st.st_size != (off_t)M_SIZE)
		wl_fail("%s: memfd size %lld, want %lu", role, (long long)st.st_size, M_SIZE);
	if (fcntl(M_FD, F_GET_SEALS) != M_SEALS)
		wl_fail("%s: memfd seals %#x, want %#x", role, fcntl(M_FD, F_GET_SEALS), M_SEALS);
	if (fcntl(N_FD, F_GET_SEALS) != F_SEAL_SEAL)
		wl_fail("%s: plain memfd seals %#x, want F_SEAL_SEAL", role, fcntl(N_FD, F_GET_SEALS));
	if (ftruncate(M_FD, M_SIZE * 2) == 0 || errno != EPERM)
		wl_fail("%s: growing the sealed memfd did not fail with EPERM", role);
	if (pread(M_FD, buf, 16384, 0) != 16384 || wl_check_fill(buf, 16384, 7) >= 0)
		wl_fail("%s: memfd data (first 16 KiB through the fd) lost its pattern", role);
	if (wl_check_fill(MA, 16384, 7) >= 0)
		wl_fail("%s: memfd data (first 16 KiB through the mapping) lost its pattern", role);
	if (memcmp(MB, MA + 16384, 2 * PG))
		wl_fail("%s: the mapping at offset 16 KiB differs from the one at 0", role);
	if (pread(M_FD, buf, PG, M_SIZE - PG) != (ssize_t)PG || wl_check_fill(buf, PG, 8) >= 0)
		wl_fail("%s: the memfd's last page lost its pattern", role);
	if (pread(M_FD, buf, PG, M_SIZE / 2) != (ssize_t)PG)
		wl_fail("%s: cannot read the memfd's hole", role);
	for (size_t i = 0; i < PG; i++)
		if (buf[i]) {
			wl_fail("%s: the memfd's hole is not zero", role);
			break;
		}
	check_fd(S_FD, "/memfd:wl-sealed (deleted)", 0, FD_CLOEXEC);
	if (fcntl(S_FD, F_GET_SEALS) != S_SEALS)
		wl_fail("%s: sealed memfd seals %#x, want %#x", role, fcntl(S_FD, F_GET_SEALS), S_SEALS);
	if (wl_check_fill(MS, 2 * PG, 10) >= 0)
		wl_fail("%s: the sealed memfd's read-only mapping lost its pattern", role);
	if (pwrite(S_FD, "x", 1, 0) == 1 || errno != EPERM)
		wl_fail("%s: a write to the memfd sealed against writes did not fail with EPERM", role);
	if (fstat(N_FD, &st) || st.st_size != N_LEN || pread(N_FD, buf, N_LEN, 0) != N_LEN ||
	    wl_check_fill(buf, N_LEN & ~7UL, 9) >= 0)
		wl_fail("%s: the plain memfd lost its contents", role);
}

/* Within one process: a write through one mapping is seen through the other and the fd. */
static void check_one_object(uint64_t token, size_t off)
{
	uint64_t v = 0;

	*(volatile uint64_t *)(MB + off) = token;
	if (*(volatile uint64_t *)(MA + 16384 + off) != token)
		wl_fail("%s: a write through one mapping of the memfd is not seen through another",
			role);
	if (pread(M_FD, &v, 8, 16384 + off) != 8 || v != token)
		wl_fail("%s: a write through the memfd mapping is not seen through its fd", role);
}

static int wait_for(volatile uint64_t *word, uint64_t want, int fd, off_t off)
{
	long deadline = now_ms() + HANDSHAKE_MS;
	uint64_t v;

	for (;;) {
		if (fd >= 0) {
			if (pread(fd, &v, 8, off) != 8)
				v = 0;
		} else {
			v = *word;
		}
		if (v == want)
			return 0;
		if (now_ms() > deadline)
			return -1;
		wl_sleep_ms(5);
	}
}

static void __attribute__((noreturn)) run_child(void)
{
	char buf[1100];
	int n;

	role = "child";
	wl_pid = getpid();
	if (syscall(SYS_get_robust_list, 0, &wl_robust_head, &wl_robust_len) ||
	    prctl(PR_GET_TID_ADDRESS, &wl_tid_address))
		_exit(2);
	while (!wl_stop) {
		wl_counter++;
		*a_word(1) = wl_counter;
		*ma_word(MA_COUNTERS + 8) = wl_counter;
		wl_sleep_ms(50);
	}
	check_static();
	check_one_object(0xc41d, 64);
	if (wait_for(a_word(2), TOKEN_A1, -1, 0))
		wl_fail("child: the parent's token never appeared in the shared anonymous memory");
	if (wait_for(ma_word(MA_COUNTERS + 16), TOKEN_M1, -1, 0))
		wl_fail("child: the parent's write through the memfd's fd is not seen in the mapping");
	*a_word(3) = TOKEN_A2;
	*ma_word(MA_COUNTERS + 24) = TOKEN_M2;
	wl_check_task_links();
	if (wl_failure[0])
		n = snprintf(buf, sizeof(buf), "FAIL: %s\n", wl_failure);
	else
		n = snprintf(buf, sizeof(buf), "PASS\n");
	wl_write_file("result-child", buf, (size_t)n);
	_exit(wl_failure[0] ? 1 : 0);
}

static void *map(size_t len, int fd, off_t off)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_SHARED | (fd < 0 ? MAP_ANONYMOUS : 0), fd, off);

	if (p == MAP_FAILED) {
		fprintf(stderr, "mmap: %s\n", strerror(errno));
		exit(2);
	}
	return p;
}

static int make_memfd(const char *name, unsigned flags, int at)
{
	int fd = memfd_create(name, flags);

	if (fd < 0 || dup3(fd, at, flags & MFD_CLOEXEC ? O_CLOEXEC : 0) != at) {
		fprintf(stderr, "memfd_create/dup3: %s\n", strerror(errno));
		exit(2);
	}
	close(fd);
	return at;
}

int main(int argc, char **argv)
{
	static uint8_t buf[M_DATA];
	char pidbuf[32], res[700];
	int status = 0, n;
	pid_t r;
	long deadline;

	wl_init(argc, argv);
	if (argc > 2 && !strcmp(argv[2], "sysv")) {
		int id = shmget(IPC_PRIVATE, PG, IPC_CREAT | 0600);
		void *seg = id < 0 ? (void *)-1 : shmat(id, NULL, 0);

		if (seg == (void *)-1 || shmctl(id, IPC_RMID, NULL)) {
			fprintf(stderr, "shmget/shmat: %s\n", strerror(errno));
			return 2;
		}
		memset(seg, 1, PG);
	}
	A = map(A_PAGES * PG, -1, 0);
	for (int i = 0; i < A_PAGES - 1; i++)
		wl_fill(A + i * PG, PG, 100 + i);

	make_memfd("wl-shmem", MFD_CLOEXEC | MFD_ALLOW_SEALING, M_FD);
	wl_fill(buf, M_DATA, 7);
	if (ftruncate(M_FD, M_SIZE) || pwrite(M_FD, buf, M_DATA, 0) != (ssize_t)M_DATA) {
		fprintf(stderr, "memfd fill: %s\n", strerror(errno));
		return 2;
	}
	wl_fill(buf, PG, 8);
	if (pwrite(M_FD, buf, PG, M_SIZE - PG) != (ssize_t)PG ||
	    fcntl(M_FD, F_ADD_SEALS, M_SEALS) || lseek(M_FD, 1234, SEEK_SET) != 1234) {
		fprintf(stderr, "memfd seal/seek: %s\n", strerror(errno));
		return 2;
	}
	MA = map(M_DATA, M_FD, 0);
	MB = map(2 * PG, M_FD, 16384);

	make_memfd("wl-plain", 0, N_FD);
	wl_fill(buf, N_LEN & ~7UL, 9);
	if (write(N_FD, buf, N_LEN) != N_LEN) {
		fprintf(stderr, "plain memfd: %s\n", strerror(errno));
		return 2;
	}

	make_memfd("wl-sealed", MFD_CLOEXEC | MFD_ALLOW_SEALING, S_FD);
	wl_fill(buf, 2 * PG, 10);
	if (pwrite(S_FD, buf, 2 * PG, 0) != (ssize_t)(2 * PG) || fcntl(S_FD, F_ADD_SEALS, S_SEALS)) {
		fprintf(stderr, "sealed memfd: %s\n", strerror(errno));
		return 2;
	}
	MS = mmap(NULL, 2 * PG, PROT_READ, MAP_SHARED, S_FD, 0);
	if (MS == MAP_FAILED) {
		fprintf(stderr, "mmap of the sealed memfd: %s\n", strerror(errno));
		return 2;
	}

	child = fork();
	if (child < 0) {
		fprintf(stderr, "fork: %s\n", strerror(errno));
		return 2;
	}
	if (child == 0)
		run_child();
	n = snprintf(pidbuf, sizeof(pidbuf), "%d\n", (int)child);
	if (wl_write_file("child-pid", pidbuf, (size_t)n)) {
		fprintf(stderr, "child-pid: %s\n", strerror(errno));
		return 2;
	}

	wl_ready();
	while (!wl_stop) {
		wl_tick();
		*a_word(0) = wl_counter;
		*ma_word(MA_COUNTERS) = wl_counter;
		wl_sleep_ms(50);
	}

	check_static();
	check_one_object(0x9a7e, 0);
	*a_word(2) = TOKEN_A1;
	{
		uint64_t t = TOKEN_M1;

		if (pwrite(M_FD, &t, 8, MA_COUNTERS + 16) != 8)
			wl_fail("parent: pwrite of the token: %s", strerror(errno));
	}
	kill(child, SIGTERM);
	if (wait_for(a_word(3), TOKEN_A2, -1, 0))
		wl_fail("parent: the child's token never appeared in the shared anonymous memory");
	if (wait_for(NULL, TOKEN_M2, M_FD, MA_COUNTERS + 24))
		wl_fail("parent: the child's write through its memfd mapping is not seen through the fd");

	deadline = now_ms() + HANDSHAKE_MS;
	while ((r = waitpid(child, &status, WNOHANG)) == 0 || (r < 0 && errno == EINTR)) {
		if (now_ms() > deadline) {
			wl_fail("parent: the child did not exit");
			kill(child, SIGKILL);
			waitpid(child, &status, 0);
			break;
		}
		wl_sleep_ms(10);
	}
	if (r == child && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
		int fd;
		char path[4200];

		wl_path(path, sizeof(path), "result-child");
		res[0] = 0;
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			ssize_t k = read(fd, res, sizeof(res) - 1);

			res[k < 0 ? 0 : k] = 0;
			close(fd);
		}
		wl_fail("parent: the child failed (status %#x): %s", status, res);
	}
	wl_finish();
}
