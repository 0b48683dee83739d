/*
 * wl_sigstate STATEDIR [seccomp]: pending signals with their siginfo, POSIX
 * timers, resource limits, personality, no_new_privs and capabilities must
 * survive. Two threads: main and "sigstate-t2".
 *
 * Blocked in both threads: SIGUSR1, SIGUSR2, SIGRTMIN+1..+5. Left pending:
 * - process-wide: SIGUSR1 from kill() (SI_USER, si_pid), SIGRTMIN+1 queued
 *   twice with sigqueue() (SI_QUEUE, values 111 then 222), SIGRTMIN+2 from
 *   periodic timer A (SI_TIMER, its id and value);
 * - for t2 only: SIGUSR2 from tgkill() (SI_TKILL), SIGRTMIN+4 from
 *   rt_tgsigqueueinfo (SI_QUEUE, value 333), SIGRTMIN+3 from one-shot timer D
 *   (SIGEV_THREAD_ID to t2, expired);
 * - for main only: SIGRTMIN+5 from pthread_kill() (SI_TKILL).
 * Timers (a first timer is created and deleted so that the ids have a gap):
 * A periodic 20 ms CLOCK_MONOTONIC, SIGRTMIN+2 blocked; B periodic 10 ms
 * CLOCK_REALTIME, SIGRTMIN+6 handled (counter); C one-shot 1 h, to t2; D
 * one-shot 1 ms, to t2, expired. ITIMER_REAL periodic 30 ms with SIGALRM
 * blocked: it expired, its SIGALRM is pending (SI_KERNEL) and the kernel
 * re-arms it only when that is taken. Limits lowered: NOFILE 200/400, CORE 0/1 MiB,
 * STACK soft 4 MiB, SIGPENDING 900/1000. personality |= ADDR_NO_RANDOMIZE,
 * no_new_privs = 1, CAP_SYS_BOOT out of the bounding set, CAP_NET_RAW out of
 * the effective set, CAP_NET_BIND_SERVICE inheritable and ambient.
 *
 * With "seccomp", a filter is also installed in both threads (getpriority
 * fails with EPERM), and must still be there after the restore.
 * With "strict", once ready t2 is joined and the main thread enters seccomp
 * strict mode and waits in read(); on SIGTERM it calls getpid(), for which
 * strict mode kills it with SIGKILL (exit status 3 means strict mode was
 * lost). It never writes a result.
 *
 * On SIGTERM each thread verifies its own queue (sigtimedwait: signal, code,
 * value, pid, timer id; nothing extra), then main the process-wide part.
 */
#include "wl_common.h"

#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/personality.h>
#include <sys/resource.h>
#include <sys/time.h>

#define A_VALUE 0xA1
#define B_VALUE 0xB2
#define C_VALUE 0xC3
#define D_VALUE 0xD4
#define A_PERIOD_NS 20000000L
#define B_PERIOD_NS 10000000L
#define C_SECONDS 3600
#define ITIMER_PERIOD_US 30000

static timer_t tm_a, tm_b, tm_c, tm_d;
static pid_t t2_tid;
static volatile int t2_started;
static volatile int t2_verify;
static volatile int t2_done;
static char t2_failure[1024];
static volatile sig_atomic_t b_count;
static int seccomp_mode;
/* si_code of a tgkill() signal as this kernel reports it (SI_TKILL, or SI_USER on some). */
static int tkill_code;
static char status_start[256];
static char t2_status_start[256];

struct lim {
	int res;
	const char *name;
	rlim_t cur, max;
};

static struct lim lims[] = {
	{ RLIMIT_NOFILE, "NOFILE", 200, 400 },
	{ RLIMIT_CORE, "CORE", 0, 1 << 20 },
	{ RLIMIT_STACK, "STACK", 4 << 20, 0 /* hard: unchanged, filled in */ },
	{ RLIMIT_SIGPENDING, "SIGPENDING", 900, 1000 },
};

static void b_handler(int sig)
{
	(void)sig;
	b_count++;
}

static pid_t gettid_(void)
{
	return (pid_t)syscall(SYS_gettid);
}

/* Capability and identity lines of a task's status, as one string. */
static void status_lines(const char *path, char *out, size_t len)
{
	static const char *keys[] = { "CapInh:", "CapPrm:", "CapEff:", "CapBnd:",
				      "CapAmb:", "NoNewPrivs:", "Seccomp:" };
	char line[256];
	FILE *f = fopen(path, "re");
	size_t used = 0;

	out[0] = 0;
	if (!f)
		return;
	while (fgets(line, sizeof(line), f))
		for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
			if (!strncmp(line, keys[i], strlen(keys[i])) &&
			    used + strlen(line) < len) {
				strcpy(out + used, line);
				used += strlen(line);
			}
	fclose(f);
}

/*
 * Takes `sig` from the calling thread's queues (zero timeout) and checks its
 * siginfo; returns 0 when it matches. `what` names it in failures.
 */
static int expect_signal(char *fail, size_t flen, const char *what, int sig, int code, int value,
			 timer_t *timer)
{
	sigset_t set;
	siginfo_t si;
	struct timespec zero = { 0, 0 };

	sigemptyset(&set);
	sigaddset(&set, sig);
	if (sigtimedwait(&set, &si, &zero) != sig) {
		if (!fail[0])
			snprintf(fail, flen, "%s: signal %d is not pending (%s)", what, sig,
				 strerror(errno));
		return -1;
	}
	if (si.si_code != code) {
		if (!fail[0])
			snprintf(fail, flen, "%s: si_code %d, want %d", what, si.si_code, code);
		return -1;
	}
	if (code == SI_USER || code == tkill_code || code == SI_QUEUE) {
		if (si.si_pid != wl_pid || si.si_uid != getuid()) {
			if (!fail[0])
				snprintf(fail, flen, "%s: si_pid %d si_uid %d, want %d %d", what,
					 (int)si.si_pid, (int)si.si_uid, (int)wl_pid,
					 (int)getuid());
			return -1;
		}
	}
	if ((code == SI_QUEUE || code == SI_TIMER) && si.si_value.sival_int != value) {
		if (!fail[0])
			snprintf(fail, flen, "%s: si_value %d, want %d", what,
				 si.si_value.sival_int, value);
		return -1;
	}
	if (code == SI_TIMER && si.si_timerid != (int)(intptr_t)*timer) {
		if (!fail[0])
			snprintf(fail, flen, "%s: si_timerid %d, want %d", what, si.si_timerid,
				 (int)(intptr_t)*timer);
		return -1;
	}
	return 0;
}

static void expect_none(char *fail, size_t flen, const char *what, int sig)
{
	sigset_t set;
	siginfo_t si;
	struct timespec zero = { 0, 0 };

	sigemptyset(&set);
	sigaddset(&set, sig);
	if (sigtimedwait(&set, &si, &zero) == sig && !fail[0])
		snprintf(fail, flen, "%s: signal %d pending again (si_code %d, value %d)", what,
			 sig, si.si_code, si.si_value.sival_int);
}

static void *t2_main(void *arg)
{
	sigset_t pend;

	(void)arg;
	prctl(PR_SET_NAME, "sigstate-t2");
	t2_tid = gettid_();
	/* thread-self: a copy in a new pid namespace sees the host's /proc. */
	status_lines("/proc/thread-self/status", t2_status_start, sizeof(t2_status_start));
	__atomic_store_n(&t2_started, 1, __ATOMIC_SEQ_CST);
	while (!__atomic_load_n(&t2_verify, __ATOMIC_SEQ_CST))
		wl_sleep_ms(10);

	{
		char now[256];

		status_lines("/proc/thread-self/status", now, sizeof(now));
		if (strcmp(now, t2_status_start))
			snprintf(t2_failure, sizeof(t2_failure), "t2 status now: %s; was: %s", now,
				 t2_status_start);
	}
	/* main's own signal must not show in t2's pending set. */
	sigpending(&pend);
	if (sigismember(&pend, SIGRTMIN + 5) && !t2_failure[0])
		snprintf(t2_failure, sizeof(t2_failure), "t2 sees main's SIGRTMIN+5");
	expect_signal(t2_failure, sizeof(t2_failure), "t2 SIGUSR2 (tgkill)", SIGUSR2, tkill_code,
		      0, NULL);
	expect_signal(t2_failure, sizeof(t2_failure), "t2 SIGRTMIN+4 (rt_tgsigqueueinfo)",
		      SIGRTMIN + 4, SI_QUEUE, 333, NULL);
	expect_signal(t2_failure, sizeof(t2_failure), "t2 SIGRTMIN+3 (timer D)", SIGRTMIN + 3,
		      SI_TIMER, D_VALUE, &tm_d);
	expect_none(t2_failure, sizeof(t2_failure), "t2 SIGUSR2", SIGUSR2);
	expect_none(t2_failure, sizeof(t2_failure), "t2 SIGRTMIN+4", SIGRTMIN + 4);
	expect_none(t2_failure, sizeof(t2_failure), "t2 SIGRTMIN+3", SIGRTMIN + 3);
	__atomic_store_n(&t2_done, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

static int capset_(uint64_t eff, uint64_t prm, uint64_t inh)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2] = {
		{ (uint32_t)eff, (uint32_t)prm, (uint32_t)inh },
		{ (uint32_t)(eff >> 32), (uint32_t)(prm >> 32), (uint32_t)(inh >> 32) },
	};

	return (int)syscall(SYS_capset, &h, d);
}

static int capget_(uint64_t *eff, uint64_t *prm, uint64_t *inh)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];

	if (syscall(SYS_capget, &h, d))
		return -1;
	*eff = d[0].effective | (uint64_t)d[1].effective << 32;
	*prm = d[0].permitted | (uint64_t)d[1].permitted << 32;
	*inh = d[0].inheritable | (uint64_t)d[1].inheritable << 32;
	return 0;
}

static void die(const char *what)
{
	fprintf(stderr, "%s: %s\n", what, strerror(errno));
	exit(2);
}

static void make_timer(timer_t *t, clockid_t clock, int notify, int sig, int value, pid_t tid)
{
	struct sigevent sev;

	memset(&sev, 0, sizeof(sev));
	sev.sigev_notify = notify;
	sev.sigev_signo = sig;
	sev.sigev_value.sival_int = value;
	sev._sigev_un._tid = tid;
	if (timer_create(clock, &sev, t))
		die("timer_create");
}

static void arm(timer_t t, long interval_ns, time_t value_s, long value_ns)
{
	struct itimerspec its = { { interval_ns / 1000000000L, interval_ns % 1000000000L },
				  { value_s, value_ns } };

	if (timer_settime(t, 0, &its, NULL))
		die("timer_settime");
}

static void install_seccomp(void)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getpriority, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { sizeof(f) / sizeof(f[0]), f };

	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0))
		die("PR_SET_SECCOMP");
}

static void check_timer(const char *what, timer_t t, long interval_ns, time_t min_left_s,
			time_t max_left_s)
{
	struct itimerspec its;

	if (timer_gettime(t, &its)) {
		wl_fail("%s: timer_gettime: %s", what, strerror(errno));
		return;
	}
	if (its.it_interval.tv_sec != interval_ns / 1000000000L ||
	    its.it_interval.tv_nsec != interval_ns % 1000000000L)
		wl_fail("%s: interval %ld.%09ld, want %ld ns", what, (long)its.it_interval.tv_sec,
			its.it_interval.tv_nsec, interval_ns);
	if (its.it_value.tv_sec < min_left_s || its.it_value.tv_sec > max_left_s)
		wl_fail("%s: %ld s left, want %ld..%ld", what, (long)its.it_value.tv_sec,
			(long)min_left_s, (long)max_left_s);
	if (timer_getoverrun(t) < 0)
		wl_fail("%s: timer_getoverrun: %s", what, strerror(errno));
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	sigset_t block;
	pthread_t t2;
	timer_t gap;
	int persona;
	uint64_t eff, prm, inh;
	struct rlimit rl;
	union sigval v;
	siginfo_t qi;
	char fail[512] = "";

	wl_init(argc, argv);
	seccomp_mode = argc > 2 && !strcmp(argv[2], "seccomp");

	/* Identity first: t2 inherits it. */
	persona = personality(0xffffffff);
	if (personality((unsigned long)persona | ADDR_NO_RANDOMIZE) < 0)
		die("personality");
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		die("PR_SET_NO_NEW_PRIVS");
	if (prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT, 0, 0, 0))
		die("PR_CAPBSET_DROP");
	if (capget_(&eff, &prm, &inh))
		die("capget");
	inh |= 1ULL << CAP_NET_BIND_SERVICE;
	eff &= ~(1ULL << CAP_NET_RAW);
	if (capset_(eff, prm, inh))
		die("capset");
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0))
		die("PR_CAP_AMBIENT_RAISE");
	for (size_t i = 0; i < sizeof(lims) / sizeof(lims[0]); i++) {
		if (getrlimit(lims[i].res, &rl))
			die("getrlimit");
		if (!lims[i].max)
			lims[i].max = rl.rlim_max;
		rl.rlim_cur = lims[i].cur;
		rl.rlim_max = lims[i].max;
		if (setrlimit(lims[i].res, &rl))
			die("setrlimit");
	}
	if (seccomp_mode)
		install_seccomp();

	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGUSR2);
	for (int i = 1; i <= 5; i++)
		sigaddset(&block, SIGRTMIN + i);
	sigaddset(&block, SIGRTMIN + 7);
	sigaddset(&block, SIGALRM);
	sigprocmask(SIG_BLOCK, &block, NULL);
	{
		sigset_t one;
		siginfo_t si;
		struct timespec zero = { 0, 0 };

		sigemptyset(&one);
		sigaddset(&one, SIGRTMIN + 7);
		syscall(SYS_tgkill, wl_pid, gettid_(), SIGRTMIN + 7);
		if (sigtimedwait(&one, &si, &zero) != SIGRTMIN + 7)
			die("sigtimedwait");
		tkill_code = si.si_code;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = b_handler;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGRTMIN + 6, &sa, NULL))
		die("sigaction");

	if (pthread_create(&t2, NULL, t2_main, NULL))
		die("pthread_create");
	while (!__atomic_load_n(&t2_started, __ATOMIC_SEQ_CST))
		wl_sleep_ms(1);

	/* Timers; the deleted one leaves a gap in the ids. */
	make_timer(&gap, CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 2, 0, 0);
	make_timer(&tm_a, CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 2, A_VALUE, 0);
	timer_delete(gap);
	make_timer(&tm_b, CLOCK_REALTIME, SIGEV_SIGNAL, SIGRTMIN + 6, B_VALUE, 0);
	make_timer(&tm_c, CLOCK_MONOTONIC, SIGEV_THREAD_ID | SIGEV_SIGNAL, SIGRTMIN + 3, C_VALUE,
		   t2_tid);
	make_timer(&tm_d, CLOCK_BOOTTIME, SIGEV_THREAD_ID | SIGEV_SIGNAL, SIGRTMIN + 3, D_VALUE,
		   t2_tid);
	arm(tm_a, A_PERIOD_NS, 0, A_PERIOD_NS);
	arm(tm_b, B_PERIOD_NS, 0, B_PERIOD_NS);
	arm(tm_c, 0, C_SECONDS, 0);
	arm(tm_d, 0, 0, 1000000);
	{
		struct itimerval it = { { 0, ITIMER_PERIOD_US }, { 0, ITIMER_PERIOD_US } };

		if (setitimer(ITIMER_REAL, &it, NULL))
			die("setitimer");
	}

	/* Signals. */
	kill(wl_pid, SIGUSR1);
	v.sival_int = 111;
	sigqueue(wl_pid, SIGRTMIN + 1, v);
	v.sival_int = 222;
	sigqueue(wl_pid, SIGRTMIN + 1, v);
	syscall(SYS_tgkill, wl_pid, t2_tid, SIGUSR2);
	memset(&qi, 0, sizeof(qi));
	qi.si_signo = SIGRTMIN + 4;
	qi.si_code = SI_QUEUE;
	qi.si_pid = wl_pid;
	qi.si_uid = getuid();
	qi.si_value.sival_int = 333;
	if (syscall(SYS_rt_tgsigqueueinfo, wl_pid, t2_tid, SIGRTMIN + 4, &qi))
		die("rt_tgsigqueueinfo");
	pthread_kill(pthread_self(), SIGRTMIN + 5);
	/* Timers A and D expire meanwhile; A's signal stays queued. */
	wl_sleep_ms(100);

	status_lines("/proc/thread-self/status", status_start, sizeof(status_start));

	wl_ready();
	if (argc > 2 && !strcmp(argv[2], "strict")) {
		int p[2];
		char c;

		/* Single-threaded from here: strict mode kills only the calling thread. */
		__atomic_store_n(&t2_verify, 1, __ATOMIC_SEQ_CST);
		pthread_join(t2, NULL);
		if (pipe(p))
			die("pipe");
		if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0))
			die("PR_SET_SECCOMP strict");
		while (!wl_stop)
			read(p[0], &c, 1);
		syscall(SYS_getpid);
		syscall(SYS_exit, 3);
	}
	while (!wl_stop) {
		wl_sleep_ms(50);
		wl_tick();
	}

	/* t2 first: it checks its own queue. */
	__atomic_store_n(&t2_verify, 1, __ATOMIC_SEQ_CST);
	pthread_join(t2, NULL);
	if (t2_failure[0])
		wl_fail("%s", t2_failure);

	{
		char now[256];
		sigset_t pend;

		status_lines("/proc/thread-self/status", now, sizeof(now));
		if (strcmp(now, status_start))
			wl_fail("status now: %s; was: %s", now, status_start);
		sigpending(&pend);
		if (sigismember(&pend, SIGUSR2) || sigismember(&pend, SIGRTMIN + 4) ||
		    sigismember(&pend, SIGRTMIN + 3))
			wl_fail("main sees a signal queued for t2");
	}
	expect_signal(fail, sizeof(fail), "SIGRTMIN+5 (pthread_kill to main)", SIGRTMIN + 5,
		      tkill_code, 0, NULL);
	expect_signal(fail, sizeof(fail), "SIGUSR1 (kill)", SIGUSR1, SI_USER, 0, NULL);
	expect_signal(fail, sizeof(fail), "SIGRTMIN+1 first (sigqueue)", SIGRTMIN + 1, SI_QUEUE,
		      111, NULL);
	expect_signal(fail, sizeof(fail), "SIGRTMIN+1 second (sigqueue)", SIGRTMIN + 1, SI_QUEUE,
		      222, NULL);
	expect_signal(fail, sizeof(fail), "SIGRTMIN+2 (timer A)", SIGRTMIN + 2, SI_TIMER, A_VALUE,
		      &tm_a);
	{
		struct itimerval it;

		/* Pending, as the kernel left it: 0 left, the interval kept. */
		if (getitimer(ITIMER_REAL, &it) || it.it_interval.tv_sec != 0 ||
		    it.it_interval.tv_usec != ITIMER_PERIOD_US)
			wl_fail("ITIMER_REAL interval %ld.%06ld, want %d us",
				(long)it.it_interval.tv_sec, (long)it.it_interval.tv_usec,
				ITIMER_PERIOD_US);
		expect_signal(fail, sizeof(fail), "SIGALRM (ITIMER_REAL)", SIGALRM, SI_KERNEL, 0,
			      NULL);
		/* Taking it re-armed the timer. */
		if (getitimer(ITIMER_REAL, &it) ||
		    (it.it_value.tv_sec == 0 && it.it_value.tv_usec == 0))
			wl_fail("ITIMER_REAL was not re-armed when its SIGALRM was taken");
	}
	expect_none(fail, sizeof(fail), "SIGRTMIN+5", SIGRTMIN + 5);
	expect_none(fail, sizeof(fail), "SIGUSR1", SIGUSR1);
	expect_none(fail, sizeof(fail), "SIGRTMIN+1", SIGRTMIN + 1);
	if (fail[0])
		wl_fail("%s", fail);

	check_timer("timer A", tm_a, A_PERIOD_NS, 0, 0);
	check_timer("timer B", tm_b, B_PERIOD_NS, 0, 0);
	check_timer("timer C", tm_c, 0, C_SECONDS - 600, C_SECONDS);
	check_timer("timer D", tm_d, 0, 0, 0);
	{
		sig_atomic_t before = b_count;

		for (int i = 0; i < 50 && b_count == before; i++)
			wl_sleep_ms(10);
		if (b_count == before)
			wl_fail("timer B's handler no longer runs");
	}

	for (size_t i = 0; i < sizeof(lims) / sizeof(lims[0]); i++) {
		if (getrlimit(lims[i].res, &rl))
			wl_fail("getrlimit(%s): %s", lims[i].name, strerror(errno));
		else if (rl.rlim_cur != lims[i].cur || rl.rlim_max != lims[i].max)
			wl_fail("RLIMIT_%s is %llu/%llu, want %llu/%llu", lims[i].name,
				(unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max,
				(unsigned long long)lims[i].cur, (unsigned long long)lims[i].max);
	}
	if (personality(0xffffffff) != (persona | ADDR_NO_RANDOMIZE))
		wl_fail("personality %#x, want %#x", personality(0xffffffff),
			persona | ADDR_NO_RANDOMIZE);
	if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1)
		wl_fail("no_new_privs is not set");
	if (seccomp_mode) {
		errno = 0;
		if (getpriority(PRIO_PROCESS, 0) != -1 || errno != EPERM)
			wl_fail("the seccomp filter no longer refuses getpriority");
	}
	timer_delete(tm_b);
	wl_finish();
}
