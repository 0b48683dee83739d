/*
 * wl_locks STATEDIR: a process holding file locks of every kind.
 *
 * State built, each file 200 bytes in STATEDIR:
 * - lock-ex at fd 50: flock(LOCK_EX);
 * - lock-sh at fd 51: flock(LOCK_SH);
 * - lock-posix at fd 52: POSIX record locks, write on bytes 10-19 and read
 *   from 100 to EOF (F_SETLK);
 * - lock-ofd at fd 53: an OFD write lock on bytes 0-99 (F_OFD_SETLK).
 * Checked on SIGTERM by a helper child forked then (so not part of any dump),
 * which opens each file again and probes without waiting: the exclusive flock
 * refuses even a shared one; the shared flock admits a shared one and refuses
 * an exclusive one; F_GETLK reports the write range (owned by the process's
 * pid as it sees it), the read range, and nothing between them; F_OFD_GETLK
 * reports the OFD range (pid -1) and nothing after it. The helper's verdict is
 * its exit status and STATEDIR/result-helper.
 *
 * With "tree", a child K is forked once the locks are taken (STATEDIR/child-pid):
 * it shares the open file descriptions that own the flocks and the OFD lock,
 * so they show in its fdinfo too; it waits for SIGTERM, which the parent sends
 * after the helper's checks, and exits 0.
 */
#include "wl_common.h"

#include <sys/file.h>
#include <sys/wait.h>

#define EX_FD 50
#define SH_FD 51
#define POSIX_FD 52
#define OFD_FD 53

static char paths[4][4200];

static void make(int i, const char *name, int at)
{
	static const char data[200];
	int fd;

	wl_path(paths[i], sizeof(paths[i]), name);
	fd = open(paths[i], O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || write(fd, data, sizeof(data)) != sizeof(data) || dup2(fd, at) != at ||
	    close(fd)) {
		fprintf(stderr, "%s: %s\n", name, strerror(errno));
		exit(2);
	}
}

static int setlk(int fd, int cmd, short type, off_t start, off_t len)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };

	return fcntl(fd, cmd, &fl);
}

/* What F_GETLK / F_OFD_GETLK say about a write lock on [start, start+len). */
static struct flock getlk(int fd, int cmd, off_t start, off_t len)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = start, .l_len = len };

	if (fcntl(fd, cmd, &fl))
		fl.l_type = -1;
	return fl;
}

static void __attribute__((noreturn)) helper(pid_t holder)
{
	char buf[1100];
	int fd, n;
	struct flock fl;

	wl_failure[0] = 0;
	fd = open(paths[0], O_RDONLY | O_CLOEXEC);
	if (fd < 0 || flock(fd, LOCK_SH | LOCK_NB) == 0 || errno != EWOULDBLOCK)
		wl_fail("the exclusive flock is not held");
	close(fd);
	fd = open(paths[1], O_RDONLY | O_CLOEXEC);
	if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK)
		wl_fail("the shared flock is not held (an exclusive one was granted)");
	if (fd < 0 || flock(fd, LOCK_SH | LOCK_NB))
		wl_fail("the shared flock is exclusive");
	close(fd);
	fd = open(paths[2], O_RDWR | O_CLOEXEC);
	fl = getlk(fd, F_GETLK, 10, 10);
	if (fl.l_type != F_WRLCK || fl.l_start != 10 || fl.l_len != 10 || fl.l_pid != holder)
		wl_fail("POSIX write lock 10-19: F_GETLK says type %d %lld+%lld pid %d", fl.l_type,
			(long long)fl.l_start, (long long)fl.l_len, (int)fl.l_pid);
	fl = getlk(fd, F_GETLK, 150, 10);
	if (fl.l_type != F_RDLCK || fl.l_start != 100 || fl.l_len != 0 || fl.l_pid != holder)
		wl_fail("POSIX read lock 100-EOF: F_GETLK says type %d %lld+%lld pid %d", fl.l_type,
			(long long)fl.l_start, (long long)fl.l_len, (int)fl.l_pid);
	fl = getlk(fd, F_GETLK, 20, 80);
	if (fl.l_type != F_UNLCK)
		wl_fail("POSIX: bytes 20-99 are locked (type %d)", fl.l_type);
	close(fd);
	fd = open(paths[3], O_RDWR | O_CLOEXEC);
	fl = getlk(fd, F_OFD_GETLK, 50, 1);
	if (fl.l_type != F_WRLCK || fl.l_start != 0 || fl.l_len != 100 || fl.l_pid != -1)
		wl_fail("OFD write lock 0-99: F_OFD_GETLK says type %d %lld+%lld pid %d", fl.l_type,
			(long long)fl.l_start, (long long)fl.l_len, (int)fl.l_pid);
	fl = getlk(fd, F_OFD_GETLK, 100, 0);
	if (fl.l_type != F_UNLCK)
		wl_fail("OFD: bytes from 100 on are locked (type %d)", fl.l_type);
	close(fd);
	if (wl_failure[0])
		n = snprintf(buf, sizeof(buf), "FAIL: %s\n", wl_failure);
	else
		n = snprintf(buf, sizeof(buf), "PASS\n");
	wl_write_file("result-helper", buf, (size_t)n);
	_exit(wl_failure[0] ? 1 : 0);
}

int main(int argc, char **argv)
{
	char res[700], buf[32];
	int status = 0, n;
	pid_t h, k = 0;

	wl_init(argc, argv);
	make(0, "lock-ex", EX_FD);
	make(1, "lock-sh", SH_FD);
	make(2, "lock-posix", POSIX_FD);
	make(3, "lock-ofd", OFD_FD);
	if (flock(EX_FD, LOCK_EX | LOCK_NB) || flock(SH_FD, LOCK_SH | LOCK_NB) ||
	    setlk(POSIX_FD, F_SETLK, F_WRLCK, 10, 10) || setlk(POSIX_FD, F_SETLK, F_RDLCK, 100, 0) ||
	    setlk(OFD_FD, F_OFD_SETLK, F_WRLCK, 0, 100)) {
		fprintf(stderr, "locking: %s\n", strerror(errno));
		return 2;
	}

	if (argc > 2 && !strcmp(argv[2], "tree")) {
		k = fork();
		if (k == 0) {
			while (!wl_stop)
				wl_sleep_ms(50);
			_exit(0);
		}
		n = snprintf(buf, sizeof(buf), "%d\n", (int)k);
		if (k < 0 || wl_write_file("child-pid", buf, (size_t)n)) {
			fprintf(stderr, "fork: %s\n", strerror(errno));
			return 2;
		}
	}

	wl_ready();
	while (!wl_stop) {
		wl_tick();
		wl_sleep_ms(50);
	}

	h = fork();
	if (h == 0)
		helper(getppid());
	if (h < 0 || waitpid(h, &status, 0) != h) {
		wl_fail("helper: %s", strerror(errno));
	} else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		int fd;
		char path[4200];
		ssize_t k = 0;

		wl_path(path, sizeof(path), "result-helper");
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			k = read(fd, res, sizeof(res) - 1);
			close(fd);
		}
		res[k < 0 ? 0 : k] = 0;
		wl_fail("the locks are not as taken: %s", res);
	}
	if (k > 0) {
		kill(k, SIGTERM);
		if (waitpid(k, &status, 0) != k || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
			wl_fail("child K did not exit cleanly (status %#x)", status);
	}
	wl_finish();
}
