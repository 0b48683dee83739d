/*
 * wl_files STATEDIR: the fd table, cwd and umask must survive.
 *
 * - fd A: files/a.dat O_RDONLY, at offset A_OFF;
 * - fd B: files/b.log O_WRONLY|O_APPEND, some bytes written;
 * - fd C: files/c.dat O_RDWR|O_CLOEXEC, at offset C_OFF;
 * - fd 10: /dev/null (dup2);
 * - cwd: STATEDIR/files/sub, umask 027;
 * - a timerfd (CLOCK_MONOTONIC, O_NONBLOCK) due in 1000 s, every 7 s after;
 * - a signalfd for SIGUSR2 (blocked), and an eventfd (semaphore, count 3).
 * Verified: offsets, F_GETFL/F_GETFD, that each fd is still the same file
 * (dev/inode of the path), the content read from the offsets, that B still
 * appends, cwd, umask; the timer's interval and that it is still armed (due
 * later than now, not later than it was); a SIGUSR2 sent to itself is read
 * from the signalfd; the eventfd reads 1, three times, then would block.
 */
#include "wl_common.h"

#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>

#define A_LEN (64 * 1024)
#define A_OFF 12345
#define C_LEN (16 * 1024)
#define C_OFF 777
#define NULL_FD 10

struct tracked {
	const char *name;
	int fd;
	int fl, fd_flags;
	off_t off;
	struct stat st;
};

static void die(const char *what)
{
	fprintf(stderr, "%s: %s\n", what, strerror(errno));
	exit(2);
}

static void record(struct tracked *t)
{
	t->fl = fcntl(t->fd, F_GETFL);
	t->fd_flags = fcntl(t->fd, F_GETFD);
	t->off = lseek(t->fd, 0, SEEK_CUR);
	if (fstat(t->fd, &t->st))
		die("fstat");
}

static void verify(const struct tracked *t, const char *path)
{
	struct stat st, pst;
	off_t off;
	int v;

	if (fstat(t->fd, &st)) {
		wl_fail("%s: fd %d is gone: %s", t->name, t->fd, strerror(errno));
		return;
	}
	if ((v = fcntl(t->fd, F_GETFL)) != t->fl)
		wl_fail("%s: F_GETFL %#o, want %#o", t->name, v, t->fl);
	if ((v = fcntl(t->fd, F_GETFD)) != t->fd_flags)
		wl_fail("%s: F_GETFD %d, want %d", t->name, v, t->fd_flags);
	if ((off = lseek(t->fd, 0, SEEK_CUR)) != t->off)
		wl_fail("%s: offset %lld, want %lld", t->name, (long long)off, (long long)t->off);
	if (st.st_dev != t->st.st_dev || st.st_ino != t->st.st_ino)
		wl_fail("%s: fd refers to another file", t->name);
	if (path && (stat(path, &pst) || pst.st_ino != st.st_ino || pst.st_dev != st.st_dev))
		wl_fail("%s: fd is not the file at %s", t->name, path);
}

static void write_all(int fd, const void *buf, size_t len)
{
	if (write(fd, buf, len) != (ssize_t)len)
		die("write");
}

int main(int argc, char **argv)
{
	char dir[4200], sub[4300], pa[4300], pb[4300], pc[4300], cwd[4300];
	static uint8_t a_data[A_LEN], c_data[C_LEN], buf[A_LEN];
	static const char b_line[] = "appended line\n";
	struct tracked a = { "a.dat (O_RDONLY)", -1, 0, 0, 0, { 0 } };
	struct tracked b = { "b.log (O_WRONLY|O_APPEND)", -1, 0, 0, 0, { 0 } };
	struct tracked c = { "c.dat (O_RDWR|O_CLOEXEC)", -1, 0, 0, 0, { 0 } };
	struct tracked n = { "/dev/null at fd 10", NULL_FD, 0, 0, 0, { 0 } };
	struct stat st;
	mode_t old_umask;
	int fd, tfd, sfd, efd;
	struct itimerspec its = { { 7, 0 }, { 1000, 0 } }, now;
	struct signalfd_siginfo si;
	sigset_t usr2;
	uint64_t v;

	wl_init(argc, argv);
	wl_path(dir, sizeof(dir), "files");
	snprintf(sub, sizeof(sub), "%s/sub", dir);
	snprintf(pa, sizeof(pa), "%s/a.dat", dir);
	snprintf(pb, sizeof(pb), "%s/b.log", dir);
	snprintf(pc, sizeof(pc), "%s/c.dat", dir);
	if (mkdir(dir, 0755) || mkdir(sub, 0755))
		die("mkdir");

	wl_fill(a_data, A_LEN, 0xAA);
	wl_fill(c_data, C_LEN, 0xCC);
	fd = open(pa, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die("create a.dat");
	write_all(fd, a_data, A_LEN);
	close(fd);

	a.fd = open(pa, O_RDONLY);
	if (a.fd < 0 || lseek(a.fd, A_OFF, SEEK_SET) != A_OFF)
		die("a.dat");
	b.fd = open(pb, O_WRONLY | O_APPEND | O_CREAT | O_TRUNC, 0644);
	if (b.fd < 0)
		die("b.log");
	for (int i = 0; i < 3; i++)
		write_all(b.fd, b_line, sizeof(b_line) - 1);
	c.fd = open(pc, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (c.fd < 0)
		die("c.dat");
	write_all(c.fd, c_data, C_LEN);
	if (lseek(c.fd, C_OFF, SEEK_SET) != C_OFF)
		die("lseek c");
	fd = open("/dev/null", O_RDWR);
	if (fd < 0 || dup2(fd, NULL_FD) != NULL_FD)
		die("/dev/null");
	close(fd);

	tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	if (tfd < 0 || timerfd_settime(tfd, 0, &its, NULL))
		die("timerfd");
	sigemptyset(&usr2);
	sigaddset(&usr2, SIGUSR2);
	if (sigprocmask(SIG_BLOCK, &usr2, NULL))
		die("sigprocmask");
	sfd = signalfd(-1, &usr2, SFD_NONBLOCK);
	if (sfd < 0)
		die("signalfd");
	efd = eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK);
	if (efd < 0)
		die("eventfd");

	record(&a);
	record(&b);
	record(&c);
	record(&n);
	if (chdir(sub))
		die("chdir");
	umask(027);

	wl_ready();
	while (!wl_stop) {
		wl_sleep_ms(50);
		wl_tick();
	}

	verify(&a, pa);
	verify(&b, pb);
	verify(&c, pc);
	verify(&n, "/dev/null");
	if ((a.fl & O_ACCMODE) != O_RDONLY || (b.fl & (O_ACCMODE | O_APPEND)) != (O_WRONLY | O_APPEND) ||
	    (c.fl & O_ACCMODE) != O_RDWR || c.fd_flags != FD_CLOEXEC || a.fd_flags || b.fd_flags)
		wl_fail("flags at start were not the ones requested");

	/* Content from the offsets. */
	if (read(a.fd, buf, 1000) != 1000 || memcmp(buf, a_data + A_OFF, 1000))
		wl_fail("a.dat: content read from offset %d differs", A_OFF);
	if (read(c.fd, buf, 1000) != 1000 || memcmp(buf, c_data + C_OFF, 1000))
		wl_fail("c.dat: content read from offset %d differs", C_OFF);
	/* B still appends (its offset was at the end anyway: write at offset 0 to prove it). */
	if (lseek(b.fd, 0, SEEK_SET) != 0)
		wl_fail("b.log: cannot seek");
	write_all(b.fd, b_line, sizeof(b_line) - 1);
	if (stat(pb, &st) || st.st_size != 4 * (off_t)(sizeof(b_line) - 1))
		wl_fail("b.log: size %lld after an O_APPEND write, want %lld", (long long)st.st_size,
			4 * (long long)(sizeof(b_line) - 1));
	if (write(NULL_FD, "x", 1) != 1)
		wl_fail("fd 10: write to /dev/null failed");

	if (!getcwd(cwd, sizeof(cwd)))
		wl_fail("getcwd: %s", strerror(errno));
	else if (strcmp(cwd, sub))
		wl_fail("cwd is %s, want %s", cwd, sub);
	old_umask = umask(022);
	if (old_umask != 027)
		wl_fail("umask %03o, want 027", (unsigned)old_umask);

	if (timerfd_gettime(tfd, &now))
		wl_fail("timerfd_gettime: %s", strerror(errno));
	else if (now.it_interval.tv_sec != 7 || now.it_interval.tv_nsec != 0)
		wl_fail("timerfd interval %lld.%09ld s, want 7 s", (long long)now.it_interval.tv_sec,
			now.it_interval.tv_nsec);
	else if ((now.it_value.tv_sec == 0 && now.it_value.tv_nsec == 0) ||
		 now.it_value.tv_sec >= 1000)
		wl_fail("timerfd due in %lld s, want armed and below 1000 s",
			(long long)now.it_value.tv_sec);
	if (!(fcntl(tfd, F_GETFL) & O_NONBLOCK))
		wl_fail("timerfd lost O_NONBLOCK");
	kill(getpid(), SIGUSR2);
	if (read(sfd, &si, sizeof(si)) != (ssize_t)sizeof(si) || si.ssi_signo != SIGUSR2)
		wl_fail("signalfd: no SIGUSR2 read (%s)", strerror(errno));
	for (int i = 0; i < 3; i++)
		if (read(efd, &v, sizeof(v)) != sizeof(v) || v != 1)
			wl_fail("eventfd: read %d gave %llu, want 1", i, (unsigned long long)v);
	if (read(efd, &v, sizeof(v)) != -1 || errno != EAGAIN)
		wl_fail("eventfd: a fourth read did not block (count was more than 3)");
	wl_finish();
}
