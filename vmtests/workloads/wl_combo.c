/*
 * wl_combo STATEDIR [SIZE_MIB]: the combined case of the kernel-objects issue,
 * a 4-thread process with SIZE_MIB (default 512) MiB of memory and a child
 * connected to it by a pipe and a socketpair.
 *
 * - The parent fills SIZE_MIB MiB with a pattern, then forks the child (which
 *   so shares those pages copy-on-write), then starts 3 threads.
 * - Every tick (~10 ms) the parent writes the next 8-byte sequence number into
 *   the pipe; the child reads it, checks it follows the last one, and sends it
 *   back over the socketpair (SOCK_STREAM); the parent checks the echoes come
 *   back in order. The child reads only while more than LAG numbers are queued,
 *   so numbers are in flight in the pipe (and echoes in the socket) at any
 *   checkpoint.
 * - Each thread t (1..3) rewrites its own page range of the region with its
 *   generation g (every 2 ms) under its own mutex and counts; the main thread
 *   ticks STATEDIR/counter.
 * - STATEDIR/child holds the child's pid (written before "ready").
 *
 * On SIGTERM the parent stops and joins the threads and checks the region
 * (the threads' pages hold their last generation, all else the pattern),
 * closes the pipe, and waits for the child: the child drains the pipe to EOF
 * (checking every number), echoes the rest, checks its own copy of the region
 * (the pattern everywhere: the threads' writes came after its fork) and exits 0,
 * or 1 after printing why. The parent then reads every echo to EOF and checks
 * the last one is the last number it wrote, and that the child exited 0.
 */
#include "wl_common.h"

#include <poll.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define PAGE 4096UL
#define MIB (1024UL * 1024UL)
#define LAG 8
#define THREADS 3
#define THREAD_PAGES 256
#define SEED 0xC0B0ULL

static uint8_t *region;
static size_t region_len;
static int pipe_fd[2], sock_fd[2];

struct worker {
	pthread_t th;
	pthread_mutex_t lock;
	uint64_t gen;
	size_t first_page;
};
static struct worker workers[THREADS];

static void write_gen(struct worker *w)
{
	for (size_t p = 0; p < THREAD_PAGES; p++) {
		uint64_t *words = (uint64_t *)(region + (w->first_page + p) * PAGE);

		for (size_t i = 0; i < PAGE / 8; i++)
			words[i] = w->gen << 32 | (w->first_page + p) << 9 | i;
	}
}

static void *work(void *arg)
{
	struct worker *w = arg;

	while (!wl_stop) {
		pthread_mutex_lock(&w->lock);
		w->gen++;
		write_gen(w);
		pthread_mutex_unlock(&w->lock);
		wl_sleep_ms(2);
	}
	return NULL;
}

/* Checks the region: the workers' ranges (if `with_workers`) hold their
 * generation, everything else the pattern. */
static void check_region(int with_workers)
{
	for (size_t off = 0; off < region_len; off += PAGE) {
		size_t page = off / PAGE;
		struct worker *owner = NULL;

		for (int t = 0; t < THREADS && with_workers; t++)
			if (page >= workers[t].first_page &&
			    page < workers[t].first_page + THREAD_PAGES && workers[t].gen > 0)
				owner = &workers[t];
		if (owner) {
			const uint64_t *words = (const uint64_t *)(region + off);

			for (size_t i = 0; i < PAGE / 8; i++)
				if (words[i] != (owner->gen << 32 | page << 9 | i)) {
					wl_fail("page %zu word %zu: not generation %llu", page, i,
						(unsigned long long)owner->gen);
					return;
				}
		} else if (wl_check_fill(region + off, PAGE, SEED + page) >= 0) {
			wl_fail("page %zu lost its pattern", page);
			return;
		}
	}
}

static int read_full(int fd, void *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = read(fd, (char *)buf + got, len - got);

		if (n == 0)
			return 0;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		got += (size_t)n;
	}
	return 1;
}

static int write_full(int fd, const void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = write(fd, (const char *)buf + done, len - done);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		done += (size_t)n;
	}
	return 0;
}

static void __attribute__((noreturn)) child_main(void)
{
	uint64_t last = 0, n;

	close(pipe_fd[1]);
	close(sock_fd[0]);
	/* It ends when the parent closes the pipe, not on a signal. */
	signal(SIGTERM, SIG_IGN);
	for (;;) {
		struct pollfd pfd = { .fd = pipe_fd[0], .events = POLLIN };
		int queued = 0, r;

		if (poll(&pfd, 1, 2) < 0 && errno != EINTR)
			wl_fail("child: poll: %s", strerror(errno));
		if (ioctl(pipe_fd[0], FIONREAD, &queued) < 0)
			wl_fail("child: FIONREAD: %s", strerror(errno));
		if (wl_failure[0])
			break;
		/* Leave LAG numbers in flight until the parent has closed its end. */
		if (!(pfd.revents & POLLHUP) && queued <= (int)(LAG * sizeof(n)))
			continue;
		r = read_full(pipe_fd[0], &n, sizeof(n));
		if (r == 0)
			break;
		if (r < 0)
			wl_fail("child: pipe read: %s", strerror(errno));
		else if (n != last + 1)
			wl_fail("child: got %llu after %llu", (unsigned long long)n,
				(unsigned long long)last);
		if (wl_failure[0])
			break;
		last = n;
		if (write_full(sock_fd[1], &n, sizeof(n)))
			wl_fail("child: socket write: %s", strerror(errno));
	}
	check_region(0);
	close(sock_fd[1]);
	if (wl_failure[0])
		fprintf(stderr, "wl_combo child: FAIL: %s\n", wl_failure);
	_exit(wl_failure[0] ? 1 : 0);
}

int main(int argc, char **argv)
{
	uint64_t size_mib = 512, seq = 0, echoed = 0, e;
	pid_t child;
	char buf[32];
	int n, status = 0;

	wl_init(argc, argv);
	if (argc > 2)
		size_mib = strtoull(argv[2], NULL, 10);
	if (size_mib < 8) {
		fprintf(stderr, "SIZE_MIB must be >= 8\n");
		return 2;
	}
	region_len = size_mib * MIB;
	region = mmap(NULL, region_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (region == MAP_FAILED) {
		fprintf(stderr, "mmap: %s\n", strerror(errno));
		return 2;
	}
	for (size_t off = 0; off < region_len; off += PAGE)
		wl_fill(region + off, PAGE, SEED + off / PAGE);
	if (pipe(pipe_fd) || socketpair(AF_UNIX, SOCK_STREAM, 0, sock_fd)) {
		fprintf(stderr, "pipe/socketpair: %s\n", strerror(errno));
		return 2;
	}
	child = fork();
	if (child < 0) {
		fprintf(stderr, "fork: %s\n", strerror(errno));
		return 2;
	}
	if (child == 0)
		child_main();
	close(pipe_fd[0]);
	close(sock_fd[1]);
	for (int t = 0; t < THREADS; t++) {
		workers[t].first_page = (size_t)(t + 1) * (region_len / PAGE / (THREADS + 1));
		pthread_mutex_init(&workers[t].lock, NULL);
		if (pthread_create(&workers[t].th, NULL, work, &workers[t])) {
			fprintf(stderr, "pthread_create failed\n");
			return 2;
		}
	}
	n = snprintf(buf, sizeof(buf), "%d\n", (int)child);
	if (wl_write_file("child", buf, (size_t)n)) {
		fprintf(stderr, "cannot write child\n");
		return 2;
	}
	wl_ready();
	while (!wl_stop) {
		wl_tick();
		seq++;
		if (write_full(pipe_fd[1], &seq, sizeof(seq)))
			wl_fail("pipe write: %s", strerror(errno));
		/* Echoes are read only while more than LAG are outstanding. */
		while (seq - echoed > LAG && !wl_failure[0]) {
			if (read_full(sock_fd[0], &e, sizeof(e)) <= 0) {
				if (errno == EINTR && wl_stop)
					break;
				wl_fail("socket read: %s", strerror(errno));
				break;
			}
			if (e != echoed + 1)
				wl_fail("echo %llu after %llu", (unsigned long long)e,
					(unsigned long long)echoed);
			echoed = e;
		}
		wl_sleep_ms(10);
	}
	for (int t = 0; t < THREADS; t++)
		pthread_join(workers[t].th, NULL);
	check_region(1);
	close(pipe_fd[1]);
	while (read_full(sock_fd[0], &e, sizeof(e)) > 0) {
		if (e != echoed + 1)
			wl_fail("echo %llu after %llu", (unsigned long long)e,
				(unsigned long long)echoed);
		echoed = e;
	}
	if (echoed != seq)
		wl_fail("last echo %llu, last number sent %llu", (unsigned long long)echoed,
			(unsigned long long)seq);
	while (waitpid(child, &status, 0) < 0)
		if (errno != EINTR) {
			wl_fail("waitpid: %s", strerror(errno));
			break;
		}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		wl_fail("the child ended with status %#x", status);
	wl_finish();
}
