/*
 * wl_fifo STATEDIR [tree]: named pipes (FIFOs) with data in flight, and open
 * file descriptions shared by several fds, must survive a checkpoint.
 *
 * FIFOs (made with mkfifo in STATEDIR):
 * - fifo1: read end at fd 30 (O_RDONLY|O_NONBLOCK), its dup at fd 32, write
 *   end at fd 31 (O_WRONLY, blocking); capacity raised to 128 KiB; FIFO_LEN
 *   bytes of a pattern written and left unread;
 * - fifo2: one O_RDWR fd 33 with "hello" in flight.
 * Descriptions shared by several fds of the process:
 * - d.dat: fd 40 (O_RDWR, offset 100), fd 41 = F_DUPFD_CLOEXEC of it, fd 42 =
 *   dup2 of it; fd 43: another open of d.dat (O_RDONLY|O_CLOEXEC, offset 50),
 *   a description of its own;
 * - l.log: fd 44 (O_WRONLY|O_APPEND), dup at fd 45.
 *
 * With "tree": a child C is forked after all of the above (it inherits every
 * fd: the same descriptions as the root's), plus s.dat at fd 50 (O_RDWR,
 * offset 10) opened before the fork. C opens fifo1 once more itself (fd 34,
 * O_RDONLY|O_NONBLOCK) and then waits for commands on an anonymous pipe from
 * the root, answering on another. Its pid is in STATEDIR/child.
 *
 * On SIGTERM the root verifies: flags, close-on-exec flags and offsets as
 * they were; fifo1 holds exactly the FIFO_LEN bytes (byte-exact), then is
 * empty; its capacity is 128 KiB; a write to fd 31 is read back from fd 32;
 * clearing O_NONBLOCK on fd 32 clears it on fd 30 (one description); fifo2 holds "hello" and nothing more; a read on fd 41 moves
 * fds 40 and 42 but not 43; a seek on 42 moves 40; O_APPEND set on 40 shows on
 * 41; a write through 45 appends. With "tree": C writes W_LEN bytes at fd 50
 * and seeks fd 40, the root sees both offsets moved; the root writes R_LEN
 * bytes at fd 50 and C sees its offset moved; C appends to l.log through fd 44
 * and the root sees the file grow; C checks its own fds (fd 34 is fifo1, its
 * own description, still O_NONBLOCK) and writes STATEDIR/result-child, which
 * the root quotes if C fails.
 */
#include "wl_common.h"

#include <poll.h>
#include <sys/wait.h>

#define FIFO_LEN 20000
#define FIFO_SIZE (128 * 1024)
#define D_LEN 8192
#define W_LEN 123
#define R_LEN 7
#define S_OFF 10

static int tree;
static pid_t child;
static int p_cmd[2], p_ack[2];
static uint8_t fifo_data[FIFO_LEN];
static uint8_t d_data[D_LEN];

static void die(const char *what)
{
	fprintf(stderr, "%s: %s\n", what, strerror(errno));
	exit(2);
}

static void write_all(int fd, const void *buf, size_t len)
{
	if (write(fd, buf, len) != (ssize_t)len)
		die("write");
}

/* Opens path with flags and moves the fd to number at. */
static void open_at(const char *path, int flags, int at)
{
	int fd = open(path, flags, 0644);

	if (fd < 0)
		die(path);
	if (fd != at) {
		if (dup3(fd, at, flags & O_CLOEXEC) != at)
			die("dup3");
		close(fd);
	}
}

static off_t where(int fd)
{
	return lseek(fd, 0, SEEK_CUR);
}

static void expect_off(int fd, off_t want, const char *when)
{
	off_t got = where(fd);

	if (got != want)
		wl_fail("%s: fd %d at offset %lld, want %lld", when, fd, (long long)got,
			(long long)want);
}

static void expect_fl(int fd, int want, const char *when)
{
	int got = fcntl(fd, F_GETFL);

	if (got < 0 || (got & (O_ACCMODE | O_NONBLOCK | O_APPEND)) != want)
		wl_fail("%s: fd %d F_GETFL %#o, want %#o", when, fd, got, want);
}

static void expect_fd(int fd, int want)
{
	int got = fcntl(fd, F_GETFD);

	if (got != want)
		wl_fail("fd %d: F_GETFD %d, want %d", fd, got, want);
}

static int readable(int fd)
{
	struct pollfd p = { fd, POLLIN, 0 };

	return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

static void __attribute__((noreturn)) child_fail_exit(void)
{
	char buf[1100];
	int n = snprintf(buf, sizeof(buf), "%s%s\n", wl_failure[0] ? "FAIL: " : "PASS",
			 wl_failure);

	if (wl_write_file("result-child", buf, (size_t)n))
		exit(3);
	exit(wl_failure[0] ? 1 : 0);
}

/* C: answers the root's commands until 'q'. */
static void __attribute__((noreturn)) child_main(const char *f1)
{
	char cmd;
	int64_t want;
	struct stat a, b;

	close(p_cmd[1]);
	close(p_ack[0]);
	open_at(f1, O_RDONLY | O_NONBLOCK, 34);
	write_all(p_ack[1], "r", 1);
	for (;;) {
		ssize_t n = read(p_cmd[0], &cmd, 1);

		if (n < 0 && errno == EINTR)
			continue;
		if (n != 1) {
			wl_fail("child: command pipe closed");
			child_fail_exit();
		}
		switch (cmd) {
		case 'w': {
			static uint8_t w[W_LEN];

			memset(w, 'w', sizeof(w));
			write_all(50, w, W_LEN);
			write_all(44, w, W_LEN);
			if (lseek(40, 777, SEEK_SET) != 777)
				wl_fail("child: lseek fd 40");
			write_all(p_ack[1], "k", 1);
			break;
		}
		case 'c':
			if (read(p_cmd[0], &want, sizeof(want)) != sizeof(want))
				wl_fail("child: short command");
			expect_off(50, (off_t)want, "child, after the root wrote");
			write_all(p_ack[1], wl_failure[0] ? "f" : "k", 1);
			break;
		case 'q':
			if (fstat(34, &a) || stat(f1, &b) || a.st_ino != b.st_ino ||
			    !S_ISFIFO(a.st_mode))
				wl_fail("child: fd 34 is not fifo1");
			expect_fl(34, O_RDONLY | O_NONBLOCK, "child fd 34 (own open of fifo1)");
			if (getppid() != wl_pid)
				wl_fail("child: parent %d, want %d", (int)getppid(), (int)wl_pid);
			child_fail_exit();
		default:
			wl_fail("child: unknown command %c", cmd);
			child_fail_exit();
		}
	}
}

static void ask(char cmd, const void *arg, size_t len, const char *what)
{
	char ack = 0;

	write_all(p_cmd[1], &cmd, 1);
	if (len)
		write_all(p_cmd[1], arg, len);
	if (cmd == 'q')
		return;
	while (read(p_ack[0], &ack, 1) < 0 && errno == EINTR)
		;
	if (ack != 'k')
		wl_fail("child failed or died at %s (ack %c)", what, ack ? ack : '0');
}

static void verify_fifos(void)
{
	static uint8_t buf[FIFO_LEN + 4096];
	size_t got = 0;
	ssize_t n;
	int v;

	expect_fl(30, O_RDONLY | O_NONBLOCK, "fifo1 read end");
	expect_fl(32, O_RDONLY | O_NONBLOCK, "fifo1 read end's dup");
	expect_fl(31, O_WRONLY, "fifo1 write end");
	expect_fl(33, O_RDWR, "fifo2");
	expect_fd(30, 0);
	expect_fd(31, 0);
	expect_fd(32, 0);
	expect_fd(33, FD_CLOEXEC);
	if ((v = fcntl(31, F_GETPIPE_SZ)) != FIFO_SIZE)
		wl_fail("fifo1: capacity %d, want %d", v, FIFO_SIZE);
	while ((n = read(30, buf + got, sizeof(buf) - got)) > 0)
		got += (size_t)n;
	if (n < 0 && errno != EAGAIN)
		wl_fail("fifo1: read: %s", strerror(errno));
	if (got != FIFO_LEN)
		wl_fail("fifo1: %zu bytes in flight, want %d", got, FIFO_LEN);
	else if (memcmp(buf, fifo_data, FIFO_LEN))
		wl_fail("fifo1: the data in flight differs");
	/* Both ends still work: through the write end, back from the dup of the read end. */
	write_all(31, "ping", 4);
	if (read(32, buf, sizeof(buf)) != 4 || memcmp(buf, "ping", 4))
		wl_fail("fifo1: a write on fd 31 was not read back on fd 32");
	/* fds 30 and 32 are one description: status flags are shared. */
	if (fcntl(32, F_SETFL, 0))
		wl_fail("fifo1: F_SETFL");
	expect_fl(30, O_RDONLY, "fifo1 read end after F_SETFL on its dup");
	if (fcntl(32, F_SETFL, O_NONBLOCK))
		wl_fail("fifo1: F_SETFL");
	memset(buf, 0, 6);
	/* fd 33 blocks: read only what is there. */
	if (!readable(33) || read(33, buf, 5) != 5 || memcmp(buf, "hello", 5))
		wl_fail("fifo2: did not read back \"hello\"");
	if (readable(33))
		wl_fail("fifo2: more than \"hello\" in flight");
	write_all(33, "again", 5);
	if (read(33, buf, 5) != 5 || memcmp(buf, "again", 5))
		wl_fail("fifo2: O_RDWR fd does not read its own write");
}

static void verify_dups(const char *pl)
{
	static uint8_t buf[64];
	struct stat st;
	off_t size;

	expect_fl(40, O_RDWR, "d.dat fd 40");
	expect_fl(41, O_RDWR, "d.dat fd 41 (dup)");
	expect_fl(42, O_RDWR, "d.dat fd 42 (dup)");
	expect_fl(43, O_RDONLY, "d.dat fd 43 (own open)");
	expect_fd(40, 0);
	expect_fd(41, FD_CLOEXEC);
	expect_fd(42, 0);
	expect_fd(43, FD_CLOEXEC);
	expect_fd(44, 0);
	expect_fd(45, FD_CLOEXEC);
	expect_off(40, 100, "at the end");
	expect_off(41, 100, "at the end");
	expect_off(42, 100, "at the end");
	expect_off(43, 50, "at the end");
	if (read(41, buf, 10) != 10 || memcmp(buf, d_data + 100, 10))
		wl_fail("d.dat: content read at offset 100 differs");
	expect_off(40, 110, "after a read on fd 41");
	expect_off(42, 110, "after a read on fd 41");
	expect_off(43, 50, "after a read on fd 41 (own description)");
	if (lseek(42, 500, SEEK_SET) != 500)
		wl_fail("lseek fd 42");
	expect_off(40, 500, "after a seek on fd 42");
	expect_off(41, 500, "after a seek on fd 42");
	if (fcntl(40, F_SETFL, O_APPEND))
		wl_fail("F_SETFL fd 40");
	expect_fl(41, O_RDWR | O_APPEND, "d.dat fd 41 after O_APPEND set on fd 40");
	expect_fl(43, O_RDONLY, "d.dat fd 43 after O_APPEND set on fd 40");
	if (fcntl(40, F_SETFL, 0))
		wl_fail("F_SETFL fd 40");
	expect_fl(44, O_WRONLY | O_APPEND, "l.log fd 44");
	expect_fl(45, O_WRONLY | O_APPEND, "l.log fd 45 (dup)");
	if (stat(pl, &st))
		wl_fail("stat l.log");
	size = st.st_size;
	expect_off(44, size, "l.log");
	write_all(45, "x", 1);
	expect_off(44, size + 1, "l.log after a write on its dup");
}

static void verify_tree(const char *pl)
{
	struct stat st0, st1;
	off_t s0 = where(50);
	int64_t want;
	int status;
	char res[1100];
	FILE *f;

	if (s0 != S_OFF)
		wl_fail("s.dat: fd 50 at %lld, want %d", (long long)s0, S_OFF);
	if (stat(pl, &st0))
		wl_fail("stat l.log");
	ask('w', NULL, 0, "write");
	expect_off(50, s0 + W_LEN, "root, after the child wrote at fd 50");
	expect_off(40, 777, "root, after the child seeked fd 40");
	expect_off(42, 777, "root fd 42, after the child seeked fd 40");
	if (stat(pl, &st1) || st1.st_size != st0.st_size + W_LEN)
		wl_fail("l.log: size %lld after the child appended, want %lld",
			(long long)st1.st_size, (long long)st0.st_size + W_LEN);
	write_all(50, "rrrrrrr", R_LEN);
	want = s0 + W_LEN + R_LEN;
	ask('c', &want, sizeof(want), "check");
	ask('q', NULL, 0, "quit");
	if (waitpid(child, &status, 0) != child)
		wl_fail("waitpid child: %s", strerror(errno));
	else if (!WIFEXITED(status) || WEXITSTATUS(status)) {
		char path[4200];
		size_t n = 0;

		wl_path(path, sizeof(path), "result-child");
		res[0] = 0;
		f = fopen(path, "re");
		if (f) {
			n = fread(res, 1, sizeof(res) - 1, f);
			fclose(f);
		}
		res[n] = 0;
		wl_fail("child status %#x: %s", status, res);
	}
}

int main(int argc, char **argv)
{
	char f1[4200], f2[4200], pd[4200], pl[4200], ps[4200];
	char buf[32];
	int n;

	wl_init(argc, argv);
	tree = argc > 2 && !strcmp(argv[2], "tree");
	wl_path(f1, sizeof(f1), "fifo1");
	wl_path(f2, sizeof(f2), "fifo2");
	wl_path(pd, sizeof(pd), "d.dat");
	wl_path(pl, sizeof(pl), "l.log");
	wl_path(ps, sizeof(ps), "s.dat");
	if (mkfifo(f1, 0600) || mkfifo(f2, 0600))
		die("mkfifo");

	/* fifo1: the read end first (O_NONBLOCK: no writer yet), then the write end. */
	open_at(f1, O_RDONLY | O_NONBLOCK, 30);
	open_at(f1, O_WRONLY, 31);
	if (dup2(30, 32) != 32)
		die("dup2 fifo1");
	if (fcntl(31, F_SETPIPE_SZ, FIFO_SIZE) != FIFO_SIZE)
		die("F_SETPIPE_SZ");
	wl_fill(fifo_data, FIFO_LEN, 0xF1F0);
	write_all(31, fifo_data, FIFO_LEN);
	open_at(f2, O_RDWR | O_CLOEXEC, 33);
	write_all(33, "hello", 5);

	wl_fill(d_data, D_LEN, 0xDD);
	open_at(pd, O_RDWR | O_CREAT | O_TRUNC, 40);
	write_all(40, d_data, D_LEN);
	if (lseek(40, 100, SEEK_SET) != 100)
		die("lseek d");
	if (fcntl(40, F_DUPFD_CLOEXEC, 41) != 41 || dup2(40, 42) != 42)
		die("dup d");
	open_at(pd, O_RDONLY | O_CLOEXEC, 43);
	if (lseek(43, 50, SEEK_SET) != 50)
		die("lseek d 43");
	open_at(pl, O_WRONLY | O_APPEND | O_CREAT | O_TRUNC, 44);
	write_all(44, "log line\n", 9);
	if (dup3(44, 45, O_CLOEXEC) != 45)
		die("dup l");

	if (tree) {
		char ack = 0;

		open_at(ps, O_RDWR | O_CREAT | O_TRUNC, 50);
		write_all(50, d_data, 1000);
		if (lseek(50, S_OFF, SEEK_SET) != S_OFF)
			die("lseek s");
		if (pipe(p_cmd) || pipe(p_ack))
			die("pipe");
		child = fork();
		if (child < 0)
			die("fork");
		if (child == 0)
			child_main(f1);
		close(p_cmd[0]);
		close(p_ack[1]);
		if (read(p_ack[0], &ack, 1) != 1 || ack != 'r')
			die("child setup");
		n = snprintf(buf, sizeof(buf), "%d\n", (int)child);
		if (wl_write_file("child", buf, (size_t)n))
			die("write child");
	}

	wl_ready();
	while (!wl_stop) {
		wl_sleep_ms(50);
		wl_tick();
	}

	verify_fifos();
	verify_dups(pl);
	if (tree)
		verify_tree(pl);
	wl_finish();
}
