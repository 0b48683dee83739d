/*
 * wl_tree STATEDIR [SIZE_MIB]: a three-level process tree whose shape, pipes,
 * zombie and memory must survive a checkpoint (default SIZE_MIB 32).
 *
 *   root (session leader, wl_init's setsid; ticks the counter)
 *   ├── C1  process-group leader (setpgid(0, 0)); reads P1, writes P2
 *   │   └── G   in C1's group; holds SIZE_MIB/4 MiB
 *   ├── C2  in the root's group; holds SIZE_MIB/4 MiB; stopped by job control (SIGSTOP)
 *   └── Z   exited at once with status 42, left unreaped until the end
 *
 * STATEDIR/pids holds "root c1 c2 z g\n", written before "ready", once every
 * child is set up and Z is a zombie (waitid WNOWAIT). Only the root ticks
 * STATEDIR/counter.
 *
 * Pipes (fds stable after setup):
 * - P1, root -> C1: the root writes an incrementing 8-byte sequence number
 *   every tick (write end O_NONBLOCK: a full pipe is a failure, not a hang);
 *   C1 reads only while more than LAG numbers are queued, so at any moment
 *   after the first tick some data is in flight in the pipe, and checks that
 *   the sequence has no gap and no duplicate;
 * - P2, C1 -> root: C1 sends G's pid at setup, and at the end the last number
 *   it read, which must be the last one the root wrote.
 *
 * Memory: SIZE_MIB MiB written by the root before any fork (COW-shared by the
 * whole tree at a checkpoint), in 4 slices; after its fork, C1 rewrites every
 * other page of slice 1, G (forked by C1 after that, so it inherits C1's
 * pages) of slice 2, C2 of slice 3. Each process checks its own view: the
 * slices it or an ancestor rewrote before its fork hold the new pages, all
 * else the root's pattern (so the root's copy is untouched by the children).
 * G and C2 also hold SIZE_MIB/4 MiB of their own with a pattern.
 *
 * C2 is stopped by the root with SIGSTOP once set up (the root sees the stop
 * with waitpid WUNTRACED), so a checkpoint finds it in state T. At the end
 * the root continues it with SIGCONT and must then see it continued
 * (waitid WCONTINUED: the kernel reports that only for a child that was
 * stopped; a stop report a restore made is consumed on the way), then
 * SIGTERMs it as the others.
 *
 * On SIGTERM to the root: it closes P1's write end and SIGTERMs C1, which
 * drains P1 to EOF (checking every number), sends its last number over P2,
 * checks itself, SIGTERMs G and waits for G's exit status. The root then waits
 * for C1, SIGTERMs and waits for C2, reaps Z (WEXITSTATUS must be 42), checks
 * it has no other child, checks itself and writes STATEDIR/result. Each child
 * checks its pid (against the one recorded at its fork and against
 * STATEDIR/pids), its parent, process group and session, its memory and its
 * task links (robust list, clear_child_tid, rseq, as glibc set them up in the
 * child), writes PASS or FAIL to STATEDIR/result-<c1|g|c2> and exits 0 or 1;
 * a parent quotes that file when a child fails. The root's parent is not
 * checked: restored into a new pid namespace, it is outside (getppid() is 0).
 */
#include "wl_common.h"

#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define PAGE 4096UL
#define MIB (1024UL * 1024UL)
/* Sequence numbers C1 leaves queued in P1. */
#define LAG 16
#define Z_STATUS 42
/* Hang guards for the end, well below the harness's 120 s. */
#define CHILD_TIMEOUT_MS 60000
#define C1_TIMEOUT_MS 90000

#define SEED_SHARED 0x5EED0000ULL
#define SEED_G 0x6666ULL
#define SEED_C2 0xC2C2ULL

enum { SLICE_ROOT, SLICE_C1, SLICE_G, SLICE_C2, NSLICES };

static const char *role = "root";
/* As recorded by the forks (each process fills in its own at its start). */
static pid_t pid_root, pid_c1, pid_c2, pid_z, pid_g;
static pid_t my_pid;
static int p1[2], p2[2];
static uint8_t *shared;
static size_t shared_len, slice_len, own_len;
/* Bit s: slice s was rewritten by this process or an ancestor before its fork. */
static unsigned int shared_mask;

static uint64_t page_seed(size_t page, int rewritten)
{
	return SEED_SHARED + page * 2 + (rewritten ? 1 : 0);
}

static void fill_shared(void)
{
	for (size_t pg = 0; pg < shared_len / PAGE; pg++)
		wl_fill(shared + pg * PAGE, PAGE, page_seed(pg, 0));
}

/* Rewrites every other page of slice s (COW breaks those pages only). */
static void rewrite_slice(int s)
{
	size_t first = (size_t)s * slice_len / PAGE;

	for (size_t i = 0; i < slice_len / PAGE; i += 2)
		wl_fill(shared + (first + i) * PAGE, PAGE, page_seed(first + i, 1));
	shared_mask |= 1U << s;
}

static void check_shared(void)
{
	for (size_t pg = 0; pg < shared_len / PAGE; pg++) {
		size_t s = pg * PAGE / slice_len;
		size_t in_slice = pg - s * slice_len / PAGE;
		int rewritten = (shared_mask & (1U << s)) && in_slice % 2 == 0;

		if (wl_check_fill(shared + pg * PAGE, PAGE, page_seed(pg, rewritten)) >= 0) {
			wl_fail("%s: shared page %zu (slice %zu) does not hold the %s pattern", role,
				pg, s, rewritten ? "rewritten" : "root's");
			return;
		}
	}
}

static uint8_t *map_anon(size_t len)
{
	uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		fprintf(stderr, "%s: mmap %zu: %s\n", role, len, strerror(errno));
		_exit(2);
	}
	return p;
}

static uint8_t *map_filled(size_t len, uint64_t seed)
{
	uint8_t *p = map_anon(len);

	wl_fill(p, len, seed);
	return p;
}

static long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* Reads exactly len bytes, waiting at most timeout_ms; 0, or -1 with a failure recorded. */
static int read_full(int fd, void *buf, size_t len, int timeout_ms, const char *what)
{
	size_t off = 0;
	long deadline = now_ms() + timeout_ms;

	while (off < len) {
		struct pollfd pfd = { fd, POLLIN, 0 };
		long left = deadline - now_ms();
		ssize_t n;

		if (left <= 0) {
			wl_fail("%s: %s: nothing within %d ms", role, what, timeout_ms);
			return -1;
		}
		if (poll(&pfd, 1, (int)left) < 0 && errno != EINTR) {
			wl_fail("%s: %s: poll: %s", role, what, strerror(errno));
			return -1;
		}
		n = read(fd, (char *)buf + off, len - off);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n < 0) {
			wl_fail("%s: %s: read: %s", role, what, strerror(errno));
			return -1;
		}
		if (n == 0) {
			wl_fail("%s: %s: EOF after %zu of %zu bytes", role, what, off, len);
			return -1;
		}
		off += (size_t)n;
	}
	return 0;
}

/* Waits until every write end of the pipe is closed (the other side is set up). */
static void wait_eof(int fd, const char *what)
{
	char b;
	ssize_t n;

	while ((n = read(fd, &b, 1)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		fprintf(stderr, "%s: waiting for %s: read returned %zd (%s)\n", role, what, n,
			n < 0 ? strerror(errno) : "data");
		_exit(2);
	}
}

static void write_full(int fd, const void *buf, size_t len, const char *what)
{
	ssize_t n;

	do
		n = write(fd, buf, len);
	while (n < 0 && errno == EINTR);
	if (n != (ssize_t)len)
		wl_fail("%s: write %s: %zd (%s)", role, what, n, n < 0 ? strerror(errno) : "short");
}

/* STATEDIR/result-<name> of a child, without the trailing newline ("" if absent). */
static void read_child_result(const char *name, char *buf, size_t len)
{
	char file[64], path[4200];
	ssize_t n;
	int fd;

	snprintf(file, sizeof(file), "result-%s", name);
	wl_path(path, sizeof(path), file);
	buf[0] = 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		n = 0;
	buf[n] = 0;
	if (n > 0 && buf[n - 1] == '\n')
		buf[n - 1] = 0;
}

/*
 * Waits (bounded) for the child `name` to exit, which must be with status 0;
 * otherwise records a failure quoting its result file. A child that does not
 * exit in time is SIGKILLed and reaped.
 */
static void wait_child(const char *name, pid_t pid, int timeout_ms)
{
	long deadline = now_ms() + timeout_ms;
	char res[700];
	int status = 0;
	pid_t r;

	while ((r = waitpid(pid, &status, WNOHANG)) == 0 || (r < 0 && errno == EINTR)) {
		if (now_ms() > deadline) {
			wl_fail("%s: %s (pid %d) did not exit within %d ms", role, name, (int)pid,
				timeout_ms);
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			return;
		}
		wl_sleep_ms(10);
	}
	if (r != pid) {
		wl_fail("%s: waitpid(%s, pid %d): %s", role, name, (int)pid,
			r < 0 ? strerror(errno) : "another pid");
		return;
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return;
	read_child_result(name, res, sizeof(res));
	if (WIFEXITED(status))
		wl_fail("%s: %s (pid %d) exited with %d: %s", role, name, (int)pid,
			WEXITSTATUS(status), res[0] ? res : "no result file");
	else
		wl_fail("%s: %s (pid %d) was killed by signal %d", role, name, (int)pid,
			WIFSIGNALED(status) ? WTERMSIG(status) : -1);
}

/* The ids each process checks; a negative ppid is not checked. */
static void check_ids(pid_t want_ppid, pid_t want_pgid, pid_t want_sid)
{
	pid_t pid = getpid(), ppid = getppid(), pgid = getpgid(0), sid = getsid(0);

	if (pid != my_pid)
		wl_fail("%s: getpid() is %d, was %d at its fork", role, (int)pid, (int)my_pid);
	if (want_ppid >= 0 && ppid != want_ppid)
		wl_fail("%s: getppid() is %d, want %d", role, (int)ppid, (int)want_ppid);
	if (pgid != want_pgid)
		wl_fail("%s: getpgid(0) is %d, want %d", role, (int)pgid, (int)want_pgid);
	if (sid != want_sid)
		wl_fail("%s: getsid(0) is %d, want %d", role, (int)sid, (int)want_sid);
}

/* One pid of STATEDIR/pids against what this process knows (0: forked after it). */
static void check_pid(const char *who, int in_file, pid_t known)
{
	if (known != 0 && in_file != known)
		wl_fail("%s: the pids file says %s is %d, this process knows %d", role, who,
			in_file, (int)known);
}

/* The pids the root recorded in STATEDIR/pids must be the ones this process knows. */
static void check_pids_file(void)
{
	char path[4200], buf[128];
	int r, c1, c2, z, g, fd;
	ssize_t n;

	wl_path(path, sizeof(path), "pids");
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		wl_fail("%s: open pids: %s", role, strerror(errno));
		return;
	}
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	buf[n > 0 ? n : 0] = 0;
	if (sscanf(buf, "%d %d %d %d %d", &r, &c1, &c2, &z, &g) != 5) {
		wl_fail("%s: bad pids file %s", role, buf);
		return;
	}
	check_pid("root", r, pid_root);
	check_pid("c1", c1, pid_c1);
	check_pid("c2", c2, pid_c2);
	check_pid("z", z, pid_z);
	check_pid("g", g, pid_g);
}

/* In a new child: its name, pid and the task links glibc set up for it. */
static void child_start(const char *name)
{
	role = name;
	my_pid = getpid();
	wl_failure[0] = 0;
	if (syscall(SYS_get_robust_list, 0, &wl_robust_head, &wl_robust_len) ||
	    prctl(PR_GET_TID_ADDRESS, &wl_tid_address)) {
		fprintf(stderr, "%s: get_robust_list/PR_GET_TID_ADDRESS: %s\n", role,
			strerror(errno));
		_exit(2);
	}
}

/* A child's common checks, STATEDIR/result-<name>, exit 0 or 1. */
static void __attribute__((noreturn)) child_finish(void)
{
	char file[64], buf[1100];
	int n;

	check_pids_file();
	wl_check_task_links();
	snprintf(file, sizeof(file), "result-%s", role);
	if (wl_failure[0])
		n = snprintf(buf, sizeof(buf), "FAIL: %s\n", wl_failure);
	else
		n = snprintf(buf, sizeof(buf), "PASS\n");
	if (wl_write_file(file, buf, (size_t)n))
		_exit(3);
	_exit(wl_failure[0] ? 1 : 0);
}

/* G: C1's child, in C1's group; done with setup when its copy of sync_w is closed. */
static void __attribute__((noreturn)) run_g(void)
{
	uint8_t *own;

	child_start("g");
	pid_g = my_pid;
	rewrite_slice(SLICE_G);
	own = map_filled(own_len, SEED_G);
	/* Closes the sync pipe's write end (C1 then knows G is ready) and P1/P2. */
	syscall(SYS_close_range, 3U, ~0U, 0U);

	while (!wl_stop)
		wl_sleep_ms(50);

	check_ids(pid_c1, pid_c1, pid_root);
	check_shared();
	if (wl_check_fill(own, own_len, SEED_G) >= 0)
		wl_fail("g: own memory does not hold its pattern");
	child_finish();
}

/* C2: the root's second child, in the root's group. */
static void __attribute__((noreturn)) run_c2(void)
{
	uint8_t *own;

	child_start("c2");
	pid_c2 = my_pid;
	rewrite_slice(SLICE_C2);
	own = map_filled(own_len, SEED_C2);
	syscall(SYS_close_range, 3U, ~0U, 0U);

	while (!wl_stop)
		wl_sleep_ms(50);

	check_ids(pid_root, pid_root, pid_root);
	check_shared();
	if (wl_check_fill(own, own_len, SEED_C2) >= 0)
		wl_fail("c2: own memory does not hold its pattern");
	child_finish();
}

static uint64_t c1_expected = 1;

static void c1_take(uint64_t v)
{
	if (v != c1_expected)
		wl_fail("c1: P1 gave %llu, want %llu", (unsigned long long)v,
			(unsigned long long)c1_expected);
	c1_expected = v + 1;
}

/* Reads from P1 only what exceeds LAG queued numbers. */
static void c1_read_lagging(void)
{
	int avail = 0;

	if (ioctl(p1[0], FIONREAD, &avail)) {
		wl_fail("c1: FIONREAD: %s", strerror(errno));
		return;
	}
	while (avail >= (LAG + 1) * 8) {
		uint64_t v;
		ssize_t n = read(p1[0], &v, sizeof(v));

		if (n != (ssize_t)sizeof(v)) {
			wl_fail("c1: read P1: %zd (%s)", n, n < 0 ? strerror(errno) : "short");
			return;
		}
		c1_take(v);
		avail -= 8;
	}
}

/* Reads P1 to EOF (the root closed its end before telling C1 to stop). */
static void c1_drain(void)
{
	long deadline = now_ms() + CHILD_TIMEOUT_MS;

	for (;;) {
		struct pollfd pfd = { p1[0], POLLIN, 0 };
		uint64_t v;
		ssize_t n;

		if (now_ms() > deadline) {
			wl_fail("c1: P1 did not reach EOF within %d ms", CHILD_TIMEOUT_MS);
			return;
		}
		if (poll(&pfd, 1, 1000) <= 0)
			continue;
		n = read(p1[0], &v, sizeof(v));
		if (n == 0)
			return;
		if (n < 0 && errno == EINTR)
			continue;
		if (n != (ssize_t)sizeof(v)) {
			wl_fail("c1: read P1 at the end: %zd (%s)", n,
				n < 0 ? strerror(errno) : "short");
			return;
		}
		c1_take(v);
	}
}

/* C1: the root's first child, leader of its own group, parent of G. */
static void __attribute__((noreturn)) run_c1(int sync_r, int sync_w)
{
	int gsync[2];
	int32_t g32;
	uint64_t last;

	child_start("c1");
	pid_c1 = my_pid;
	close(sync_r);
	if (setpgid(0, 0)) {
		fprintf(stderr, "c1: setpgid: %s\n", strerror(errno));
		_exit(2);
	}
	close(p1[1]);
	close(p2[0]);
	rewrite_slice(SLICE_C1);
	if (pipe2(gsync, O_CLOEXEC)) {
		fprintf(stderr, "c1: pipe: %s\n", strerror(errno));
		_exit(2);
	}
	pid_g = fork();
	if (pid_g < 0) {
		fprintf(stderr, "c1: fork: %s\n", strerror(errno));
		_exit(2);
	}
	if (pid_g == 0)
		run_g();
	close(gsync[1]);
	wait_eof(gsync[0], "g");
	close(gsync[0]);
	g32 = pid_g;
	write_full(p2[1], &g32, sizeof(g32), "G's pid to P2");
	/* G has closed its copy too: the root sees EOF once this one is closed. */
	close(sync_w);

	while (!wl_stop) {
		wl_sleep_ms(50);
		c1_read_lagging();
	}

	c1_drain();
	last = c1_expected - 1;
	write_full(p2[1], &last, sizeof(last), "the last number to P2");
	check_ids(pid_root, pid_c1, pid_root);
	check_shared();
	kill(pid_g, SIGTERM);
	wait_child("g", pid_g, CHILD_TIMEOUT_MS);
	child_finish();
}

/* Stops C2 by job control and waits until the kernel reports it stopped. */
static void stop_c2(void)
{
	int status = 0;
	pid_t r;

	if (kill(pid_c2, SIGSTOP)) {
		fprintf(stderr, "kill(c2, SIGSTOP): %s\n", strerror(errno));
		exit(2);
	}
	while ((r = waitpid(pid_c2, &status, WUNTRACED)) < 0 && errno == EINTR)
		;
	if (r != pid_c2 || !WIFSTOPPED(status) || WSTOPSIG(status) != SIGSTOP) {
		fprintf(stderr, "c2 did not stop: waitpid returned %d, status %#x\n", (int)r,
			status);
		exit(2);
	}
}

/*
 * Continues C2, which must have been stopped all along: the kernel reports
 * CLD_CONTINUED only for a child that SIGCONT woke from a stop. A CLD_STOPPED
 * report still queued (a restore stops the process again, and its parent is
 * told) is consumed first.
 */
static void continue_c2(void)
{
	long deadline = now_ms() + CHILD_TIMEOUT_MS;
	siginfo_t si;

	if (kill(pid_c2, SIGCONT)) {
		wl_fail("root: kill(c2, SIGCONT): %s", strerror(errno));
		return;
	}
	for (;;) {
		memset(&si, 0, sizeof(si));
		if (waitid(P_PID, (id_t)pid_c2, &si, WSTOPPED | WCONTINUED | WNOHANG)) {
			if (errno == EINTR)
				continue;
			wl_fail("root: waitid(c2, WCONTINUED): %s", strerror(errno));
			return;
		}
		if (si.si_pid == pid_c2 && si.si_code == CLD_CONTINUED)
			return;
		if (si.si_pid == pid_c2 && si.si_code != CLD_STOPPED) {
			wl_fail("root: c2 reported si_code %d instead of being continued",
				si.si_code);
			return;
		}
		if (si.si_pid == 0 && now_ms() > deadline) {
			wl_fail("root: c2 was not stopped: SIGCONT did not continue it");
			return;
		}
		if (si.si_pid == 0)
			wl_sleep_ms(10);
	}
}

static void write_pids(void)
{
	char buf[128];
	int n = snprintf(buf, sizeof(buf), "%d %d %d %d %d\n", (int)pid_root, (int)pid_c1,
			 (int)pid_c2, (int)pid_z, (int)pid_g);

	if (wl_write_file("pids", buf, (size_t)n)) {
		fprintf(stderr, "cannot write pids: %s\n", strerror(errno));
		exit(2);
	}
}

int main(int argc, char **argv)
{
	unsigned long size_mib;
	int sync[2];
	int32_t g32;
	uint64_t seq = 0, c1_last = 0;
	siginfo_t si;
	int status;
	pid_t r;

	wl_init(argc, argv);
	size_mib = argc > 2 ? strtoul(argv[2], NULL, 10) : 32;
	if (size_mib == 0)
		size_mib = 1;
	shared_len = size_mib * MIB;
	slice_len = shared_len / NSLICES;
	own_len = shared_len / 4;
	pid_root = my_pid = wl_pid;
	/* A child that died must show as a failure, not kill the root with SIGPIPE. */
	signal(SIGPIPE, SIG_IGN);

	shared = map_anon(shared_len);
	fill_shared();
	if (pipe(p1) || pipe(p2) || pipe2(sync, O_CLOEXEC)) {
		fprintf(stderr, "pipe: %s\n", strerror(errno));
		return 2;
	}

	pid_c1 = fork();
	if (pid_c1 < 0) {
		fprintf(stderr, "fork: %s\n", strerror(errno));
		return 2;
	}
	if (pid_c1 == 0)
		run_c1(sync[0], sync[1]);
	/* Also from here, so the group exists whichever of the two runs first. */
	if (setpgid(pid_c1, pid_c1) && errno != EACCES) {
		fprintf(stderr, "setpgid(c1): %s\n", strerror(errno));
		return 2;
	}
	close(sync[1]);
	close(p1[0]);
	close(p2[1]);
	wait_eof(sync[0], "c1");
	close(sync[0]);
	if (read_full(p2[0], &g32, sizeof(g32), CHILD_TIMEOUT_MS, "G's pid from P2")) {
		fprintf(stderr, "%s\n", wl_failure);
		return 2;
	}
	pid_g = g32;
	if (fcntl(p1[1], F_SETFL, O_NONBLOCK)) {
		fprintf(stderr, "fcntl P1: %s\n", strerror(errno));
		return 2;
	}

	if (pipe2(sync, O_CLOEXEC)) {
		fprintf(stderr, "pipe: %s\n", strerror(errno));
		return 2;
	}
	pid_c2 = fork();
	if (pid_c2 < 0) {
		fprintf(stderr, "fork: %s\n", strerror(errno));
		return 2;
	}
	if (pid_c2 == 0)
		run_c2();
	close(sync[1]);
	wait_eof(sync[0], "c2");
	close(sync[0]);
	stop_c2();

	pid_z = fork();
	if (pid_z < 0) {
		fprintf(stderr, "fork: %s\n", strerror(errno));
		return 2;
	}
	if (pid_z == 0)
		_exit(Z_STATUS);
	/* Z is a zombie before anyone can look: wait for its exit without reaping it. */
	while (waitid(P_PID, (id_t)pid_z, &si, WEXITED | WNOWAIT)) {
		if (errno != EINTR) {
			fprintf(stderr, "waitid(Z): %s\n", strerror(errno));
			return 2;
		}
	}

	write_pids();
	wl_ready();
	while (!wl_stop) {
		wl_sleep_ms(50);
		if (wl_stop)
			break;
		seq++;
		if (write(p1[1], &seq, sizeof(seq)) != (ssize_t)sizeof(seq)) {
			wl_fail("root: write %llu to P1: %s", (unsigned long long)seq,
				strerror(errno));
			seq--;
			break;
		}
		wl_tick();
	}

	/* C1 reads P1 to EOF, then reports the last number it read. */
	close(p1[1]);
	kill(pid_c1, SIGTERM);
	if (!read_full(p2[0], &c1_last, sizeof(c1_last), C1_TIMEOUT_MS, "C1's last number") &&
	    c1_last != seq)
		wl_fail("root: C1 read up to %llu, the root wrote up to %llu",
			(unsigned long long)c1_last, (unsigned long long)seq);
	wait_child("c1", pid_c1, C1_TIMEOUT_MS);
	continue_c2();
	kill(pid_c2, SIGTERM);
	wait_child("c2", pid_c2, CHILD_TIMEOUT_MS);

	while ((r = waitpid(pid_z, &status, WNOHANG)) < 0 && errno == EINTR)
		;
	if (r != pid_z)
		wl_fail("root: Z (pid %d) is not a zombie child: waitpid returned %d (%s)",
			(int)pid_z, (int)r, r < 0 ? strerror(errno) : "still running");
	else if (!WIFEXITED(status) || WEXITSTATUS(status) != Z_STATUS)
		wl_fail("root: Z's wait status is %#x, want exit %d", status, Z_STATUS);
	r = waitpid(-1, &status, WNOHANG);
	if (r != -1 || errno != ECHILD)
		wl_fail("root: an unexpected child is left: waitpid(-1) returned %d", (int)r);

	check_ids(-1, pid_root, pid_root);
	check_shared();
	wl_finish();
}
