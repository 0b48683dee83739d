/*
 * wl_deleted STATEDIR [big]: regular files that were unlinked while open or
 * mapped.
 *
 * State built:
 * - D1: STATEDIR/del-data, mode 0640, 100 KiB of pattern (seed 21), at fd 40
 *   (O_RDWR, not close-on-exec) with offset 5000, unlinked; also mapped
 *   MAP_PRIVATE (2 pages at file offset 4096) with the first page rewritten
 *   (seed 23: a copy-on-write page only this process has);
 * - D2: STATEDIR/del-map, 16 KiB of pattern (seed 22), mapped MAP_SHARED
 *   read-write, its fd closed, unlinked: only the mapping holds it;
 * - D3: STATEDIR/del-append at fd 41, O_WRONLY|O_APPEND|O_CLOEXEC, 10 bytes,
 *   unlinked;
 * - with "big": D4, STATEDIR/del-big at fd 42, 65 MiB long (sparse),
 *   unlinked: more than fastcr saves, so a dump must refuse it.
 * While running, the counter is also written into D2's mapping (last word).
 * Checked on SIGTERM: each fd's /proc name ("<path> (deleted)"), link count 0,
 * size, mode, offset and flags, D1's contents through the fd, D2's through the
 * mapping, the private mapping's own and file pages, and that a write through
 * D1's fd is seen through a second open of /proc/self/fd/40 (one file) and an
 * append to D3 lands at its end.
 */
#include "wl_common.h"

#include <sys/mman.h>

#define PG 4096UL
#define D1_LEN (100 * 1024)
#define D1_FD 40
#define D2_LEN (16 * 1024)
#define D3_FD 41
#define D4_FD 42
#define D4_LEN (65UL << 20)

static uint8_t *d2, *priv;

static int make(const char *name, int flags, mode_t mode, int at, char *path, size_t len)
{
	int fd;

	wl_path(path, len, name);
	fd = open(path, flags | O_CREAT | O_EXCL, mode);
	if (fd < 0 || (at >= 0 && (dup3(fd, at, flags & O_CLOEXEC) != at || close(fd)))) {
		fprintf(stderr, "%s: %s\n", name, strerror(errno));
		exit(2);
	}
	return at >= 0 ? at : fd;
}

static void check_name(int fd, const char *path)
{
	char link[64], target[4300], want[4300];
	ssize_t n;
	struct stat st;

	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, target, sizeof(target) - 1);
	target[n < 0 ? 0 : n] = 0;
	snprintf(want, sizeof(want), "%s (deleted)", path);
	if (strcmp(target, want))
		wl_fail("fd %d is %s, want %s", fd, target, want);
	if (fstat(fd, &st) || st.st_nlink != 0)
		wl_fail("fd %d: link count %lu, want 0", fd, (unsigned long)st.st_nlink);
}

int main(int argc, char **argv)
{
	static uint8_t buf[D1_LEN];
	char p1[4200], p2[4200], p3[4200], p4[4200];
	int fd, big = argc > 2 && !strcmp(argv[2], "big");
	struct stat st;
	uint64_t v;

	wl_init(argc, argv);
	umask(0);
	make("del-data", O_RDWR, 0640, D1_FD, p1, sizeof(p1));
	wl_fill(buf, D1_LEN, 21);
	if (write(D1_FD, buf, D1_LEN) != D1_LEN || lseek(D1_FD, 5000, SEEK_SET) != 5000) {
		fprintf(stderr, "D1: %s\n", strerror(errno));
		return 2;
	}
	priv = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, D1_FD, PG);
	fd = make("del-map", O_RDWR | O_CLOEXEC, 0600, -1, p2, sizeof(p2));
	wl_fill(buf, D2_LEN, 22);
	if (priv == MAP_FAILED || write(fd, buf, D2_LEN) != D2_LEN) {
		fprintf(stderr, "D2: %s\n", strerror(errno));
		return 2;
	}
	d2 = mmap(NULL, D2_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (d2 == MAP_FAILED) {
		fprintf(stderr, "mmap D2: %s\n", strerror(errno));
		return 2;
	}
	close(fd);
	wl_fill(priv, PG, 23);
	make("del-append", O_WRONLY | O_APPEND | O_CLOEXEC, 0600, D3_FD, p3, sizeof(p3));
	if (write(D3_FD, "0123456789", 10) != 10) {
		fprintf(stderr, "D3: %s\n", strerror(errno));
		return 2;
	}
	if (big) {
		make("del-big", O_RDWR, 0600, D4_FD, p4, sizeof(p4));
		if (ftruncate(D4_FD, D4_LEN) || pwrite(D4_FD, "x", 1, D4_LEN - 1) != 1) {
			fprintf(stderr, "D4: %s\n", strerror(errno));
			return 2;
		}
		unlink(p4);
	}
	if (unlink(p1) || unlink(p2) || unlink(p3)) {
		fprintf(stderr, "unlink: %s\n", strerror(errno));
		return 2;
	}

	wl_ready();
	while (!wl_stop) {
		wl_tick();
		((volatile uint64_t *)(d2 + D2_LEN))[-1] = wl_counter;
		wl_sleep_ms(50);
	}

	check_name(D1_FD, p1);
	check_name(D3_FD, p3);
	if (fstat(D1_FD, &st) || st.st_size != D1_LEN || (st.st_mode & 07777) != 0640)
		wl_fail("D1: size %lld mode %o, want %d 0640", (long long)st.st_size,
			st.st_mode & 07777, D1_LEN);
	if (lseek(D1_FD, 0, SEEK_CUR) != 5000)
		wl_fail("D1: offset %lld, want 5000", (long long)lseek(D1_FD, 0, SEEK_CUR));
	if ((fcntl(D1_FD, F_GETFL) & O_ACCMODE) != O_RDWR || fcntl(D1_FD, F_GETFD) != 0)
		wl_fail("D1: flags %#x/%d", fcntl(D1_FD, F_GETFL), fcntl(D1_FD, F_GETFD));
	if (pread(D1_FD, buf, D1_LEN, 0) != D1_LEN || wl_check_fill(buf, D1_LEN, 21) >= 0)
		wl_fail("D1: contents lost their pattern");
	if (wl_check_fill(priv, PG, 23) >= 0)
		wl_fail("D1's private mapping lost its own page");
	if (memcmp(priv + PG, buf + 2 * PG, PG))
		wl_fail("D1's private mapping does not show the file's page");
	if (wl_check_fill(d2, D2_LEN - PG, 22) >= 0)
		wl_fail("D2's mapping lost its pattern");
	if (((volatile uint64_t *)(d2 + D2_LEN))[-1] != wl_counter)
		wl_fail("D2's mapping lost the counter");
	fd = open("/proc/self/fd/40", O_RDONLY | O_CLOEXEC);
	v = 0x0dd5a1e;
	if (fd < 0 || pwrite(D1_FD, &v, 8, 64) != 8 || pread(fd, &v, 8, 64) != 8 ||
	    v != 0x0dd5a1e)
		wl_fail("D1: a write through the fd is not seen through a second open");
	if (fd >= 0)
		close(fd);
	if ((fcntl(D3_FD, F_GETFL) & (O_ACCMODE | O_APPEND)) != (O_WRONLY | O_APPEND) ||
	    fcntl(D3_FD, F_GETFD) != FD_CLOEXEC)
		wl_fail("D3: flags %#x/%d", fcntl(D3_FD, F_GETFL), fcntl(D3_FD, F_GETFD));
	if (write(D3_FD, "x", 1) != 1 || fstat(D3_FD, &st) || st.st_size != 11)
		wl_fail("D3: an append did not land at its end (size %lld)", (long long)st.st_size);
	wl_finish();
}
