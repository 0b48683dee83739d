/*
 * wl_pipe STATEDIR: a process that is nearly always blocked in read() on an
 * empty pipe, woken by an interval timer, while another pipe holds unread data.
 *
 * State built:
 * - pipe "wake": empty; the main loop blocks in read(wake_r, 1 byte). A
 *   SIGALRM handler (ITIMER_REAL, 50 ms interval, no SA_RESTART) writes one
 *   byte into it, so every tick is one successful read. The read end is
 *   O_CLOEXEC, the write end O_NONBLOCK.
 * - pipe "held": 3000 bytes of pattern written at start and never read until
 *   the end; its size set to 128 KiB with F_SETPIPE_SZ; its read end
 *   O_NONBLOCK and moved to fd 20.
 * Checked at the end: the held data is exactly the pattern and nothing more,
 * pipe sizes and fd flags are as set, the itimer still has its interval, and
 * every tick was one byte read.
 */
#include "wl_common.h"

#include <fcntl.h>
#include <sys/time.h>

#define HELD_LEN 3000
#define HELD_FD 20
#define HELD_SIZE (128 * 1024)

static int wake_r, wake_w;
static volatile sig_atomic_t alarms;

static void on_alarm(int sig)
{
	char b = 'x';
	int saved = errno;

	(void)sig;
	alarms++;
	if (write(wake_w, &b, 1) != 1 && errno != EAGAIN)
		wl_fail("write to wake pipe: %s", strerror(errno));
	errno = saved;
}

static unsigned char held_byte(size_t i)
{
	return (unsigned char)(wl_pattern(7, i) >> 3);
}

static void check_flags(const char *what, int fd, int want_fl, int want_fd)
{
	int fl = fcntl(fd, F_GETFL), fdf = fcntl(fd, F_GETFD);

	if (fl < 0 || (fl & (O_NONBLOCK | O_ACCMODE)) != want_fl)
		wl_fail("%s: F_GETFL %#x, want %#x", what, fl, want_fl);
	if (fdf != want_fd)
		wl_fail("%s: F_GETFD %d, want %d", what, fdf, want_fd);
}

int main(int argc, char **argv)
{
	int wake[2], held[2];
	unsigned char buf[HELD_LEN + 16];
	uint64_t reads = 0;
	struct sigaction sa;
	struct itimerval it = { { 0, 50000 }, { 0, 50000 } }, cur;

	wl_init(argc, argv);
	if (pipe2(wake, O_CLOEXEC) || pipe(held)) {
		fprintf(stderr, "pipe: %s\n", strerror(errno));
		return 2;
	}
	wake_r = wake[0];
	wake_w = wake[1];
	fcntl(wake_w, F_SETFD, 0);
	fcntl(wake_w, F_SETFL, O_NONBLOCK);
	if (dup2(held[0], HELD_FD) != HELD_FD || close(held[0])) {
		fprintf(stderr, "dup2: %s\n", strerror(errno));
		return 2;
	}
	fcntl(HELD_FD, F_SETFL, O_NONBLOCK);
	if (fcntl(held[1], F_SETPIPE_SZ, HELD_SIZE) < HELD_SIZE) {
		fprintf(stderr, "F_SETPIPE_SZ: %s\n", strerror(errno));
		return 2;
	}
	for (size_t i = 0; i < HELD_LEN; i++)
		buf[i] = held_byte(i);
	if (write(held[1], buf, HELD_LEN) != HELD_LEN) {
		fprintf(stderr, "write held: %s\n", strerror(errno));
		return 2;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGALRM, &sa, NULL) || setitimer(ITIMER_REAL, &it, NULL)) {
		fprintf(stderr, "timer: %s\n", strerror(errno));
		return 2;
	}
	wl_ready();

	while (!wl_stop) {
		char b;
		ssize_t n = read(wake_r, &b, 1);

		if (n == 1) {
			reads++;
			wl_tick();
		} else if (n < 0 && errno != EINTR) {
			wl_fail("read on wake pipe: %s", strerror(errno));
			break;
		}
	}

	if (reads != wl_counter)
		wl_fail("reads %llu != counter %llu", (unsigned long long)reads,
			(unsigned long long)wl_counter);
	if (getitimer(ITIMER_REAL, &cur) || cur.it_interval.tv_sec != 0 ||
	    cur.it_interval.tv_usec != 50000)
		wl_fail("ITIMER_REAL interval is %ld.%06ld, want 0.050000",
			(long)cur.it_interval.tv_sec, (long)cur.it_interval.tv_usec);
	check_flags("wake read end", wake_r, O_RDONLY, FD_CLOEXEC);
	check_flags("wake write end", wake_w, O_WRONLY | O_NONBLOCK, 0);
	check_flags("held read end", HELD_FD, O_RDONLY | O_NONBLOCK, 0);
	check_flags("held write end", held[1], O_WRONLY, 0);
	if (fcntl(held[1], F_GETPIPE_SZ) != HELD_SIZE)
		wl_fail("held pipe size %d, want %d", fcntl(held[1], F_GETPIPE_SZ), HELD_SIZE);
	ssize_t got = read(HELD_FD, buf, sizeof(buf));
	if (got != HELD_LEN)
		wl_fail("held pipe had %zd bytes, want %d", got, HELD_LEN);
	for (ssize_t i = 0; i < got && i < HELD_LEN; i++)
		if (buf[i] != held_byte((size_t)i)) {
			wl_fail("held byte %zd is %#x, want %#x", i, buf[i], held_byte((size_t)i));
			break;
		}
	wl_finish();
}
