/*
 * wl_filemap STATEDIR: file-backed mappings whose content must survive.
 *
 * - private.dat (1 MiB) mapped MAP_PRIVATE RW, some pages modified: the
 *   private copies must keep the modifications, the other pages must still
 *   match the file, and the file must not see the modifications;
 * - shared_ro.dat (256 KiB) mapped MAP_SHARED PROT_READ: must match the file;
 * - shared_rw.dat (64 KiB) mapped MAP_SHARED RW and written through the
 *   mapping: the file and the mapping must agree.
 * The fds are closed once mapped, so only the mappings hold the files.
 */
#include "wl_common.h"

#include <sys/mman.h>

#define PAGE 4096UL
#define PRIV_LEN (1024 * 1024UL)
#define SHRO_LEN (256 * 1024UL)
#define SHRW_LEN (64 * 1024UL)

static const size_t modified[] = { 0, 7, 100, 101, 255 };

static int is_modified(size_t page)
{
	for (size_t i = 0; i < sizeof(modified) / sizeof(modified[0]); i++)
		if (modified[i] == page)
			return 1;
	return 0;
}

static void create_file(const char *name, size_t len, uint64_t seed)
{
	char path[4200];
	uint8_t *buf = malloc(len);
	int fd;

	wl_path(path, sizeof(path), name);
	wl_fill(buf, len, seed);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, buf, len) != (ssize_t)len || close(fd)) {
		fprintf(stderr, "create %s: %s\n", path, strerror(errno));
		exit(2);
	}
	free(buf);
}

static void *map_file(const char *name, size_t len, int prot, int flags)
{
	char path[4200];
	void *p;
	int fd;

	wl_path(path, sizeof(path), name);
	fd = open(path, (prot & PROT_WRITE) && (flags & MAP_SHARED) ? O_RDWR : O_RDONLY);
	if (fd < 0) {
		fprintf(stderr, "open %s: %s\n", path, strerror(errno));
		exit(2);
	}
	p = mmap(NULL, len, prot, flags, fd, 0);
	if (p == MAP_FAILED) {
		fprintf(stderr, "mmap %s: %s\n", path, strerror(errno));
		exit(2);
	}
	close(fd);
	return p;
}

/* Reads the whole file into a fresh buffer (verification only). */
static uint8_t *read_file(const char *name, size_t len)
{
	char path[4200];
	uint8_t *buf = malloc(len);
	size_t off = 0;
	int fd;

	wl_path(path, sizeof(path), name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		wl_fail("reopen %s: %s", name, strerror(errno));
		free(buf);
		return NULL;
	}
	while (off < len) {
		ssize_t n = pread(fd, buf + off, len - off, (off_t)off);

		if (n <= 0)
			break;
		off += (size_t)n;
	}
	close(fd);
	if (off != len) {
		wl_fail("%s: short read %zu of %zu", name, off, len);
		free(buf);
		return NULL;
	}
	return buf;
}

int main(int argc, char **argv)
{
	uint8_t *priv, *shro, *shrw, *file;

	wl_init(argc, argv);
	create_file("private.dat", PRIV_LEN, 0xA1);
	create_file("shared_ro.dat", SHRO_LEN, 0xB2);
	create_file("shared_rw.dat", SHRW_LEN, 0xC3);

	priv = map_file("private.dat", PRIV_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	for (size_t i = 0; i < sizeof(modified) / sizeof(modified[0]); i++)
		wl_fill(priv + modified[i] * PAGE, PAGE, 0xD000 + modified[i]);
	/* Read (but do not write) a few other pages so some clean pages are mapped. */
	for (size_t page = 1; page < PRIV_LEN / PAGE; page += 17)
		(void)*(volatile uint8_t *)(priv + page * PAGE);

	shro = map_file("shared_ro.dat", SHRO_LEN, PROT_READ, MAP_SHARED);
	shrw = map_file("shared_rw.dat", SHRW_LEN, PROT_READ | PROT_WRITE, MAP_SHARED);
	wl_fill(shrw + 4 * PAGE, 2 * PAGE, 0xE4);

	wl_ready();
	while (!wl_stop) {
		wl_sleep_ms(50);
		wl_tick();
	}

	for (size_t i = 0; i < sizeof(modified) / sizeof(modified[0]); i++)
		if (wl_check_fill(priv + modified[i] * PAGE, PAGE, 0xD000 + modified[i]) >= 0)
			wl_fail("private mapping: modified page %zu lost its content", modified[i]);
	file = read_file("private.dat", PRIV_LEN);
	if (file) {
		uint8_t *orig = malloc(PRIV_LEN);

		wl_fill(orig, PRIV_LEN, 0xA1);
		if (memcmp(file, orig, PRIV_LEN))
			wl_fail("private.dat changed on disk: private writes leaked");
		for (size_t page = 0; page < PRIV_LEN / PAGE; page++)
			if (!is_modified(page) && memcmp(priv + page * PAGE, orig + page * PAGE, PAGE)) {
				wl_fail("private mapping: unmodified page %zu differs from the file", page);
				break;
			}
		free(orig);
		free(file);
	}
	file = read_file("shared_ro.dat", SHRO_LEN);
	if (file) {
		if (memcmp(file, shro, SHRO_LEN))
			wl_fail("MAP_SHARED PROT_READ mapping differs from its file");
		if (wl_check_fill(shro, SHRO_LEN, 0xB2) >= 0)
			wl_fail("MAP_SHARED PROT_READ mapping: pattern mismatch");
		free(file);
	}
	file = read_file("shared_rw.dat", SHRW_LEN);
	if (file) {
		if (memcmp(file, shrw, SHRW_LEN))
			wl_fail("MAP_SHARED RW mapping differs from its file");
		if (wl_check_fill(shrw + 4 * PAGE, 2 * PAGE, 0xE4) >= 0)
			wl_fail("MAP_SHARED RW mapping: written pages lost");
		free(file);
	}
	wl_expect_perms("private mapping", priv, "rw-p");
	wl_expect_perms("shared read-only mapping", shro, "r--s");
	wl_expect_perms("shared read-write mapping", shrw, "rw-s");
	wl_finish();
}
