/*
 * The `cargo xtask run` demo: a small counter that checks itself.
 *
 *   counter STATEDIR
 *
 * It closes every fd above stderr (it may inherit some, e.g. a jobserver pipe
 * from cargo, that lead outside the process), starts a new session (so that
 * the process is a whole tree of its own, and fastcr can dump it without
 * --shell-job), fills 16 MiB with a
 * position-dependent pattern, writes STATEDIR/ready, then counts: every 100 ms
 * it bumps a counter, records the value in a ring kept in memory, and publishes
 * it as STATEDIR/counter. The file is written under a temporary name and
 * renamed, so no file descriptor stays open across a checkpoint and a reader
 * never sees half a number.
 *
 * On SIGTERM it checks that the pattern, the ring and its pid are intact,
 * writes "PASS" or "FAIL: <what>" to STATEDIR/result and exits 0 or 1. A
 * checkpoint and restore in between must be invisible to it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define AREA_BYTES (16UL << 20)
#define RING_LEN 1024
#define SEED 0x5eed5eedULL

static volatile sig_atomic_t stop;
static char dir[3800];
static char failure[512];
static uint64_t ring[RING_LEN];

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static void fail(const char *what)
{
	if (!failure[0])
		snprintf(failure, sizeof(failure), "%s", what);
}

static uint64_t pattern(uint64_t index)
{
	uint64_t x = (index + 1) * 0x9E3779B97F4A7C15ULL ^ SEED;

	x ^= x >> 31;
	x *= 0xBF58476D1CE4E5B9ULL;
	return x ^ (x >> 29);
}

/* Replaces STATEDIR/name with text, atomically. */
static int publish(const char *name, const char *text)
{
	char tmp[4096], dst[4096];
	size_t len = strlen(text), off = 0;
	int fd;

	snprintf(tmp, sizeof(tmp), "%s/%s.tmp", dir, name);
	snprintf(dst, sizeof(dst), "%s/%s", dir, name);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	while (off < len) {
		ssize_t n = write(fd, text + off, len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			close(fd);
			return -1;
		}
		off += (size_t)n;
	}
	if (close(fd))
		return -1;
	return rename(tmp, dst);
}

int main(int argc, char **argv)
{
	struct timespec tick = { 0, 100 * 1000000L };
	struct sigaction sa;
	uint64_t *area, counter = 0;
	char buf[600];
	pid_t pid;

	if (argc != 2 || argv[1][0] != '/' || strlen(argv[1]) >= sizeof(dir)) {
		fprintf(stderr, "usage: %s /absolute/STATEDIR\n", argv[0]);
		return 2;
	}
	strcpy(dir, argv[1]);
	if (close_range(3, ~0U, 0)) {
		perror("close_range");
		return 2;
	}
	if (setsid() < 0) {
		perror("setsid");
		return 2;
	}
	pid = getpid();

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	/* No SA_RESTART: nanosleep must return early on SIGTERM. */
	if (sigaction(SIGTERM, &sa, NULL)) {
		perror("sigaction");
		return 2;
	}

	area = mmap(NULL, AREA_BYTES, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	for (size_t i = 0; i < AREA_BYTES / 8; i++)
		area[i] = pattern(i);

	snprintf(buf, sizeof(buf), "%d\n", (int)pid);
	if (publish("counter", "0\n") || publish("ready", buf)) {
		perror("publish");
		return 2;
	}

	while (!stop) {
		nanosleep(&tick, NULL);
		counter++;
		ring[counter % RING_LEN] = counter;
		snprintf(buf, sizeof(buf), "%llu\n", (unsigned long long)counter);
		if (publish("counter", buf))
			fail("cannot write STATEDIR/counter");
	}

	if (getpid() != pid)
		fail("the pid changed");
	if (counter == 0)
		fail("the counter never advanced");
	for (uint64_t i = 0; i < RING_LEN && i < counter; i++) {
		uint64_t want = counter - i;

		if (ring[want % RING_LEN] != want) {
			fail("the ring of past counter values is corrupt");
			break;
		}
	}
	for (size_t i = 0; i < AREA_BYTES / 8; i++) {
		if (area[i] != pattern(i)) {
			snprintf(buf, sizeof(buf), "pattern mismatch at byte %zu", i * 8);
			fail(buf);
			break;
		}
	}

	if (failure[0])
		snprintf(buf, sizeof(buf), "FAIL: %s\n", failure);
	else
		snprintf(buf, sizeof(buf), "PASS %llu\n", (unsigned long long)counter);
	if (publish("result", buf))
		return 3;
	return failure[0] ? 1 : 0;
}
