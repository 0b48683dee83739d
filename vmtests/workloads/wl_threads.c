/*
 * wl_threads STATEDIR [SIZE_MIB [epoll|pipe]]: a multi-threaded process (main + 4 workers)
 * whose per-thread kernel state must survive a checkpoint, with every thread
 * caught in a different kind of wait.
 *
 * Per thread (main included), recorded at start and checked at the end by the
 * thread itself:
 * - gettid() (the TIDs are also written to STATEDIR/tids, "t1 t2 t3 t4\n",
 *   before "ready", so a test can compare /proc/PID/task);
 * - TLS: two __thread variables (a constant initialiser and a per-thread
 *   pattern) and fs_base (arch_prctl(ARCH_GET_FS));
 * - the robust futex list head (get_robust_list), clear_child_tid
 *   (PR_GET_TID_ADDRESS) and the rseq registration (registering glibc's area
 *   again must fail with EBUSY);
 * - the signal mask: each thread blocks its own distinctive set (workers all
 *   block SIGTERM, so it reaches main);
 * - the alternate signal stack: only thread 3 has one (and uses it: at the end
 *   it sends itself a signal whose SA_ONSTACK handler must run on it); every
 *   other thread must have none;
 * - its name (pthread_setname_np at start, PR_GET_NAME at the end);
 * - main and thread 1 keep ymm0-3 (zmm16-17 with AVX-512) across their raw
 *   nanosleep syscalls, each with its own values.
 *
 * What each thread is doing when a checkpoint comes (each bumps its own
 * counter every iteration and checks a window of its quarter of the heap):
 * - thread 1 ("wlt-mutex") holds the robust error-checking mutex M for its
 *   whole life, looping in nanosleep(20 ms);
 * - thread 2 ("wlt-condvar") waits on a condition variable that main
 *   signals every other tick (~100 ms), counting wakeups;
 * - thread 3 ("wlt-epoll") loops in epoll_wait(30 ms) on an eventfd main
 *   writes to every tick, counting events; with "pipe" (fastcr cannot dump
 *   eventfd and epoll fds yet), thread 3 ("wlt-poll") loops in poll(30 ms) on
 *   the read end of a pipe main writes a byte to every tick instead (both
 *   ends O_NONBLOCK);
 * - thread 4 ("wlt-futex") loops in a raw FUTEX_WAIT (100 ms timeout) on a
 *   word main changes (and wakes) every tick, counting changes;
 * - main ticks every ~50 ms (wl_tick()).
 *
 * SIZE_MIB (default 64) MiB of anonymous memory, pattern-filled by main
 * before the workers start, shared by all threads.
 *
 * On SIGTERM (main): M must still be held by thread 1 (trylock EBUSY, owner
 * thread 1); every worker must make progress again (main keeps driving the
 * wakeups for up to 5 s); then the workers are told to stop, woken and joined
 * (with a timeout: a lost clear_child_tid would hang pthread_join), each
 * returning its own verdict; thread 1 unlocks M before it exits, so M must
 * then be free; the eventfd and the epoll fd (or the pipe) must still work;
 * the whole heap
 * is verified (pattern and checksum); then main's own checks and the common
 * ones run and STATEDIR/result is written.
 */
#include "wl_common.h"

#include <asm/prctl.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>

#define PAGE 4096UL
#define WORDS (PAGE / 8)
#define MIB (1024UL * 1024UL)
#define NWORKERS 4
#define TICK_MS 50
#define WINDOW_PAGES 32
#define ALTSTACK_LEN (64 * 1024UL)
#define HEAP_SEED 0x7407EADULL
#define TLS_INIT 0x7153AD0C0FFEE321ULL
#define RSEQ_SIG_X86 0x53053053
/* How long main drives the wakeups after SIGTERM waiting for every worker. */
#define PROGRESS_TIMEOUT_MS 5000
#define JOIN_TIMEOUT_S 10

struct vecbuf {
	uint8_t r[6][64];
} __attribute__((aligned(64)));

/* One thread's identity and what it recorded at start. */
struct tstate {
	int idx; /* 0 = main, 1..4 = workers */
	const char *name;
	pthread_t th;
	pid_t tid;
	sigset_t mask;
	unsigned long fs_base;
	void *robust_head;
	size_t robust_len;
	int *tid_address;
	/* Advanced every loop iteration; progress is the thread's own wakeup count. */
	uint64_t counter;
	uint64_t progress;
	/* Next window of the heap region to check. */
	size_t window;
	struct vecbuf vin, vout;
	char fail[512];
};

static struct tstate threads[NWORKERS + 1];
static const char *names[NWORKERS + 1] = {
	NULL, "wlt-mutex", "wlt-condvar", "wlt-epoll", "wlt-futex",
};

static __thread uint64_t tls_init = TLS_INIT;
static __thread uint64_t tls_value;
static __thread struct tstate *tls_self;
/* Set by the SA_ONSTACK handler: where it ran (thread 3's check). */
static __thread volatile int tls_handler_ran;
static __thread volatile int tls_handler_on_altstack;

static int have_avx, have_avx512;
static uint8_t *heap;
static size_t heap_len, region_pages;
static uint64_t heap_sum;

static pthread_mutex_t mutex_m;
static pthread_mutex_t cv_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static uint64_t cv_seq; /* under cv_mutex */
static int efd = -1, epfd = -1;
/* "pipe" mode: thread 3 polls pipe_r instead of the epoll set. */
static int pipe_mode, pipe_r = -1, pipe_w = -1;
static uint32_t futex_word;
static volatile int stop_workers; /* written under cv_mutex, read atomically */
static pthread_barrier_t started;
static void *altstack;
static char main_name[17];

__attribute__((format(printf, 2, 3))) static void tfail(struct tstate *t, const char *fmt, ...)
{
	va_list ap;

	if (t->fail[0])
		return;
	va_start(ap, fmt);
	vsnprintf(t->fail, sizeof(t->fail), fmt, ap);
	va_end(ap);
}

static unsigned long get_fs_base(void)
{
	unsigned long base = 0;

	syscall(SYS_arch_prctl, ARCH_GET_FS, &base);
	return base;
}

static uint64_t tls_pattern(const struct tstate *t)
{
	return wl_pattern(0x715, (uint64_t)t->idx) ^ (uint64_t)t->tid;
}

static int stopping(void)
{
	return __atomic_load_n(&stop_workers, __ATOMIC_ACQUIRE);
}

static void bump(uint64_t *v)
{
	__atomic_add_fetch(v, 1, __ATOMIC_RELAXED);
}

static uint64_t load(const uint64_t *v)
{
	return __atomic_load_n(v, __ATOMIC_RELAXED);
}

/*
 * Loads the vector registers from t->vin, sleeps with a raw nanosleep,
 * stores them to t->vout: no compiled code runs in between (as in wl_heap).
 */
static void vector_sleep(struct tstate *t, long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	uint8_t *in = &t->vin.r[0][0], *out = &t->vout.r[0][0];
	long ret;

	if (have_avx512) {
		__asm__ volatile("vmovdqu (%[in]), %%ymm0\n\t"
				 "vmovdqu 64(%[in]), %%ymm1\n\t"
				 "vmovdqu 128(%[in]), %%ymm2\n\t"
				 "vmovdqu 192(%[in]), %%ymm3\n\t"
				 "vmovdqu64 256(%[in]), %%zmm16\n\t"
				 "vmovdqu64 320(%[in]), %%zmm17\n\t"
				 "syscall\n\t"
				 "vmovdqu %%ymm0, (%[out])\n\t"
				 "vmovdqu %%ymm1, 64(%[out])\n\t"
				 "vmovdqu %%ymm2, 128(%[out])\n\t"
				 "vmovdqu %%ymm3, 192(%[out])\n\t"
				 "vmovdqu64 %%zmm16, 256(%[out])\n\t"
				 "vmovdqu64 %%zmm17, 320(%[out])\n\t"
				 "vzeroupper"
				 : "=a"(ret)
				 : "0"((long)SYS_nanosleep), "D"(&ts), "S"(0L), [in] "r"(in),
				   [out] "r"(out)
				 : "rcx", "r11", "memory", "xmm0", "xmm1", "xmm2", "xmm3");
	} else if (have_avx) {
		__asm__ volatile("vmovdqu (%[in]), %%ymm0\n\t"
				 "vmovdqu 64(%[in]), %%ymm1\n\t"
				 "vmovdqu 128(%[in]), %%ymm2\n\t"
				 "vmovdqu 192(%[in]), %%ymm3\n\t"
				 "syscall\n\t"
				 "vmovdqu %%ymm0, (%[out])\n\t"
				 "vmovdqu %%ymm1, 64(%[out])\n\t"
				 "vmovdqu %%ymm2, 128(%[out])\n\t"
				 "vmovdqu %%ymm3, 192(%[out])\n\t"
				 "vzeroupper"
				 : "=a"(ret)
				 : "0"((long)SYS_nanosleep), "D"(&ts), "S"(0L), [in] "r"(in),
				   [out] "r"(out)
				 : "rcx", "r11", "memory", "xmm0", "xmm1", "xmm2", "xmm3");
	} else {
		__asm__ volatile("movdqu (%[in]), %%xmm0\n\t"
				 "movdqu 64(%[in]), %%xmm1\n\t"
				 "movdqu 128(%[in]), %%xmm2\n\t"
				 "movdqu 192(%[in]), %%xmm3\n\t"
				 "syscall\n\t"
				 "movdqu %%xmm0, (%[out])\n\t"
				 "movdqu %%xmm1, 64(%[out])\n\t"
				 "movdqu %%xmm2, 128(%[out])\n\t"
				 "movdqu %%xmm3, 192(%[out])"
				 : "=a"(ret)
				 : "0"((long)SYS_nanosleep), "D"(&ts), "S"(0L), [in] "r"(in),
				   [out] "r"(out)
				 : "rcx", "r11", "memory", "xmm0", "xmm1", "xmm2", "xmm3");
	}
	(void)ret;
}

static void init_vectors(struct tstate *t)
{
	for (size_t i = 0; i < sizeof(t->vin); i++)
		(&t->vin.r[0][0])[i] = (uint8_t)(i * 37 + 11 + 101 * t->idx);
}

static void check_vectors(struct tstate *t)
{
	size_t width = have_avx ? 32 : 16;

	for (int r = 0; r < 4; r++)
		if (memcmp(t->vin.r[r], t->vout.r[r], width))
			tfail(t, "vector register %d changed across a sleep (%s, tick %llu)", r,
			      have_avx ? "ymm" : "xmm", (unsigned long long)load(&t->counter));
	if (have_avx512)
		for (int r = 4; r < 6; r++)
			if (memcmp(t->vin.r[r], t->vout.r[r], 64))
				tfail(t, "zmm%d changed across a sleep (tick %llu)", 12 + r,
				      (unsigned long long)load(&t->counter));
	memset(&t->vout, 0, sizeof(t->vout));
}

/* Returns the index of the first word of mem that differs from the heap pattern. */
static long check_heap_words(const uint8_t *mem, size_t len, uint64_t first)
{
	const uint64_t *w = (const uint64_t *)mem;

	for (size_t i = 0; i < len / 8; i++)
		if (w[i] != wl_pattern(HEAP_SEED, first + i))
			return (long)i;
	return -1;
}

/* Worker idx owns heap pages [(idx-1) * region_pages, idx * region_pages). */
static void check_region_pages(struct tstate *t, size_t first, size_t count)
{
	size_t base = (size_t)(t->idx - 1) * region_pages;

	for (size_t n = 0; n < count; n++) {
		size_t page = base + (first + n) % region_pages;
		long bad = check_heap_words(heap + page * PAGE, PAGE, page * WORDS);

		if (bad >= 0) {
			tfail(t, "heap page %zu: bad word %ld (tick %llu)", page, bad,
			      (unsigned long long)load(&t->counter));
			return;
		}
	}
}

static void check_window(struct tstate *t)
{
	check_region_pages(t, t->window, WINDOW_PAGES);
	t->window = (t->window + WINDOW_PAGES) % region_pages;
}

static void onstack_handler(int sig)
{
	stack_t ss;
	volatile char here;

	(void)sig;
	tls_handler_ran = 1;
	if (!sigaltstack(NULL, &ss) && ss.ss_sp) {
		uintptr_t a = (uintptr_t)&here, lo = (uintptr_t)ss.ss_sp;

		tls_handler_on_altstack = a >= lo && a < lo + ss.ss_size;
	}
}

/* Records what the thread checks at the end; runs in the thread itself. */
static void record_self(struct tstate *t)
{
	t->tid = gettid();
	tls_self = t;
	tls_value = tls_pattern(t);
	t->fs_base = get_fs_base();
	if (syscall(SYS_get_robust_list, 0, &t->robust_head, &t->robust_len) ||
	    prctl(PR_GET_TID_ADDRESS, &t->tid_address))
		tfail(t, "get_robust_list/PR_GET_TID_ADDRESS at start: errno %d", errno);
	init_vectors(t);
}

static void check_mask(struct tstate *t)
{
	sigset_t cur;

	if (pthread_sigmask(SIG_BLOCK, NULL, &cur)) {
		tfail(t, "pthread_sigmask failed");
		return;
	}
	for (int sig = 1; sig <= SIGRTMAX; sig++)
		if (sigismember(&cur, sig) != sigismember(&t->mask, sig)) {
			tfail(t, "signal %d is %s, was %s", sig,
			      sigismember(&cur, sig) ? "blocked" : "not blocked",
			      sigismember(&t->mask, sig) ? "blocked" : "not blocked");
			return;
		}
}

static void check_altstack(struct tstate *t)
{
	stack_t ss;

	if (sigaltstack(NULL, &ss)) {
		tfail(t, "sigaltstack: errno %d", errno);
		return;
	}
	if (t->idx != 3) {
		if (!(ss.ss_flags & SS_DISABLE))
			tfail(t, "has an alternate signal stack %p+%zu (flags %#x), had none",
			      ss.ss_sp, ss.ss_size, (unsigned)ss.ss_flags);
		return;
	}
	if (ss.ss_sp != altstack || ss.ss_size != ALTSTACK_LEN || ss.ss_flags != 0) {
		tfail(t, "alternate signal stack is %p+%zu (flags %#x), was %p+%lu", ss.ss_sp,
		      ss.ss_size, (unsigned)ss.ss_flags, altstack, ALTSTACK_LEN);
		return;
	}
	/* Use it: the handler (SA_ONSTACK) must run on it. */
	tls_handler_ran = 0;
	tls_handler_on_altstack = 0;
	if (syscall(SYS_tgkill, getpid(), gettid(), SIGRTMIN + 5)) {
		tfail(t, "tgkill self: errno %d", errno);
		return;
	}
	if (!tls_handler_ran)
		tfail(t, "the SA_ONSTACK handler did not run");
	else if (!tls_handler_on_altstack)
		tfail(t, "the SA_ONSTACK handler did not run on the alternate stack");
}

/* The per-thread checks every thread (main included) runs on itself at the end. */
static void check_self(struct tstate *t)
{
	void *head = NULL;
	size_t len = 0;
	int *tidp = NULL;
	char name[17] = { 0 };

	if (gettid() != t->tid)
		tfail(t, "gettid() is %d, was %d", (int)gettid(), (int)t->tid);
	if (tls_self != t)
		tfail(t, "__thread self pointer is %p, want %p", (void *)tls_self, (void *)t);
	if (tls_init != TLS_INIT)
		tfail(t, "__thread initialised value is %#llx", (unsigned long long)tls_init);
	if (tls_value != tls_pattern(t))
		tfail(t, "__thread value is %#llx, want %#llx", (unsigned long long)tls_value,
		      (unsigned long long)tls_pattern(t));
	if (get_fs_base() != t->fs_base)
		tfail(t, "fs_base is %#lx, was %#lx", get_fs_base(), t->fs_base);
	if (syscall(SYS_get_robust_list, 0, &head, &len) || head != t->robust_head ||
	    len != t->robust_len)
		tfail(t, "robust list is %p/%zu, was %p/%zu", head, len, t->robust_head,
		      t->robust_len);
	if (prctl(PR_GET_TID_ADDRESS, &tidp) || tidp != t->tid_address)
		tfail(t, "clear_child_tid is %p, was %p", (void *)tidp, (void *)t->tid_address);
	if (__rseq_size > 0) {
		void *area = (char *)__builtin_thread_pointer() + __rseq_offset;

		errno = 0;
		if (syscall(SYS_rseq, area, __rseq_size < 32 ? 32 : __rseq_size, 0, RSEQ_SIG_X86) !=
			    -1 ||
		    errno != EBUSY)
			tfail(t, "rseq is not registered at glibc's area %p (errno %d)", area,
			      errno);
	}
	check_mask(t);
	check_altstack(t);
	if (prctl(PR_GET_NAME, name))
		tfail(t, "PR_GET_NAME: errno %d", errno);
	else if (strcmp(name, t->name))
		tfail(t, "name is \"%s\", was \"%s\"", name, t->name);
	if (load(&t->counter) == 0)
		tfail(t, "its counter never advanced");
}

static void worker_loop_mutex(struct tstate *t)
{
	while (!stopping()) {
		vector_sleep(t, 20);
		check_vectors(t);
		check_window(t);
		bump(&t->counter);
		bump(&t->progress);
	}
}

static void worker_loop_condvar(struct tstate *t)
{
	uint64_t seen;

	pthread_mutex_lock(&cv_mutex);
	seen = cv_seq;
	while (!stop_workers) {
		while (cv_seq == seen && !stop_workers)
			pthread_cond_wait(&cv, &cv_mutex);
		if (cv_seq != seen)
			bump(&t->progress);
		seen = cv_seq;
		pthread_mutex_unlock(&cv_mutex);
		check_window(t);
		bump(&t->counter);
		pthread_mutex_lock(&cv_mutex);
	}
	pthread_mutex_unlock(&cv_mutex);
}

static void worker_loop_poll(struct tstate *t)
{
	while (!stopping()) {
		struct pollfd pfd = { .fd = pipe_r, .events = POLLIN };
		int n = poll(&pfd, 1, 30);

		if (n < 0 && errno != EINTR) {
			tfail(t, "poll: errno %d", errno);
			return;
		}
		if (n == 1) {
			char buf[64];
			ssize_t got;

			if (!(pfd.revents & POLLIN))
				tfail(t, "poll returned revents %#x", (unsigned)pfd.revents);
			got = read(pipe_r, buf, sizeof(buf));
			if (got > 0)
				bump(&t->progress);
			else if (got == 0 || errno != EAGAIN)
				tfail(t, "read pipe: %zd, errno %d", got, errno);
		}
		check_window(t);
		bump(&t->counter);
	}
}

static void worker_loop_epoll(struct tstate *t)
{
	if (pipe_mode) {
		worker_loop_poll(t);
		return;
	}
	while (!stopping()) {
		struct epoll_event ev;
		int n = epoll_wait(epfd, &ev, 1, 30);

		if (n < 0 && errno != EINTR) {
			tfail(t, "epoll_wait: errno %d", errno);
			return;
		}
		if (n == 1) {
			uint64_t v;

			if (ev.data.u32 != 0xEFD)
				tfail(t, "epoll_wait returned data %#x, want 0xefd", ev.data.u32);
			if (read(efd, &v, sizeof(v)) == sizeof(v))
				bump(&t->progress);
			else if (errno != EAGAIN)
				tfail(t, "read eventfd: errno %d", errno);
		}
		check_window(t);
		bump(&t->counter);
	}
}

static void worker_loop_futex(struct tstate *t)
{
	while (!stopping()) {
		uint32_t seen = __atomic_load_n(&futex_word, __ATOMIC_ACQUIRE);
		struct timespec ts = { 0, 100 * 1000000L };
		long rc = syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, seen, &ts, NULL, 0);

		if (rc && errno != EAGAIN && errno != ETIMEDOUT && errno != EINTR) {
			tfail(t, "futex wait: errno %d", errno);
			return;
		}
		if (__atomic_load_n(&futex_word, __ATOMIC_ACQUIRE) != seen)
			bump(&t->progress);
		check_window(t);
		bump(&t->counter);
	}
}

static void *worker(void *arg)
{
	struct tstate *t = arg;
	int rc;

	record_self(t);
	if (pthread_setname_np(pthread_self(), t->name))
		tfail(t, "pthread_setname_np failed");
	if (pthread_sigmask(SIG_SETMASK, &t->mask, NULL))
		tfail(t, "pthread_sigmask failed");
	if (t->idx == 1 && (rc = pthread_mutex_lock(&mutex_m)))
		tfail(t, "lock M: %d", rc);
	if (t->idx == 3) {
		stack_t ss = { .ss_sp = altstack, .ss_size = ALTSTACK_LEN, .ss_flags = 0 };

		if (sigaltstack(&ss, NULL))
			tfail(t, "sigaltstack: errno %d", errno);
	}
	pthread_barrier_wait(&started);

	switch (t->idx) {
	case 1:
		worker_loop_mutex(t);
		break;
	case 2:
		worker_loop_condvar(t);
		break;
	case 3:
		worker_loop_epoll(t);
		break;
	default:
		worker_loop_futex(t);
		break;
	}

	check_self(t);
	check_region_pages(t, 0, region_pages);
	if (t->idx == 1) {
		rc = pthread_mutex_unlock(&mutex_m);
		if (rc)
			tfail(t, "unlock M (errorcheck: is the owner still us?): %d", rc);
	}
	return t;
}

/* Wakes every worker: eventfd (or pipe), futex word, and (every other call) the condvar. */
static void drive(uint64_t n)
{
	uint64_t one = 1;

	if (pipe_mode) {
		/* A full pipe (thread 3 stuck) is reported by the progress check. */
		if (write(pipe_w, "x", 1) != 1 && errno != EAGAIN)
			wl_fail("write pipe: %s", strerror(errno));
	} else if (write(efd, &one, sizeof(one)) != sizeof(one)) {
		wl_fail("write eventfd: %s", strerror(errno));
	}
	__atomic_add_fetch(&futex_word, 1, __ATOMIC_RELEASE);
	syscall(SYS_futex, &futex_word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
	if (n % 2 == 0) {
		pthread_mutex_lock(&cv_mutex);
		cv_seq++;
		pthread_cond_signal(&cv);
		pthread_mutex_unlock(&cv_mutex);
	}
}

static void set_masks(void)
{
	for (int i = 0; i <= NWORKERS; i++) {
		sigemptyset(&threads[i].mask);
		if (i)
			sigaddset(&threads[i].mask, SIGTERM);
	}
	sigaddset(&threads[0].mask, SIGRTMIN + 1);
	sigaddset(&threads[1].mask, SIGUSR1);
	sigaddset(&threads[1].mask, SIGRTMIN + 2);
	sigaddset(&threads[2].mask, SIGUSR2);
	sigaddset(&threads[2].mask, SIGRTMIN + 3);
	sigaddset(&threads[3].mask, SIGRTMIN + 4);
	sigaddset(&threads[3].mask, SIGRTMIN + 6);
	sigaddset(&threads[4].mask, SIGHUP);
	sigaddset(&threads[4].mask, SIGRTMIN + 7);
	sigaddset(&threads[4].mask, SIGRTMAX);
}

static void *map_or_die(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		fprintf(stderr, "mmap %zu: %s\n", len, strerror(errno));
		exit(2);
	}
	return p;
}

static void setup(void)
{
	pthread_mutexattr_t ma;
	struct epoll_event ev = { .events = EPOLLIN, .data.u32 = 0xEFD };
	struct sigaction sa;
	sigset_t all;
	char buf[128];
	int n;

	pthread_mutexattr_init(&ma);
	pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ERRORCHECK);
	pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
	if (pthread_mutex_init(&mutex_m, &ma)) {
		fprintf(stderr, "pthread_mutex_init failed\n");
		exit(2);
	}
	pthread_mutexattr_destroy(&ma);

	if (pipe_mode) {
		int p[2];

		if (pipe2(p, O_NONBLOCK | O_CLOEXEC)) {
			fprintf(stderr, "pipe2: %s\n", strerror(errno));
			exit(2);
		}
		pipe_r = p[0];
		pipe_w = p[1];
		names[3] = "wlt-poll";
	} else {
		efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		epfd = epoll_create1(EPOLL_CLOEXEC);
		if (efd < 0 || epfd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, efd, &ev)) {
			fprintf(stderr, "eventfd/epoll: %s\n", strerror(errno));
			exit(2);
		}
	}
	altstack = map_or_die(ALTSTACK_LEN);

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = onstack_handler;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_ONSTACK;
	if (sigaction(SIGRTMIN + 5, &sa, NULL)) {
		fprintf(stderr, "sigaction: %s\n", strerror(errno));
		exit(2);
	}

	set_masks();
	threads[0].idx = 0;
	/* Main keeps the name it was started with. */
	if (prctl(PR_GET_NAME, main_name)) {
		fprintf(stderr, "PR_GET_NAME: %s\n", strerror(errno));
		exit(2);
	}
	threads[0].name = main_name;
	record_self(&threads[0]);
	if (pthread_barrier_init(&started, NULL, NWORKERS + 1)) {
		fprintf(stderr, "pthread_barrier_init failed\n");
		exit(2);
	}
	/* Workers start with everything blocked, then set their own masks. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, NULL);
	for (int i = 1; i <= NWORKERS; i++) {
		threads[i].idx = i;
		threads[i].name = names[i];
		if (pthread_create(&threads[i].th, NULL, worker, &threads[i])) {
			fprintf(stderr, "pthread_create %d failed\n", i);
			exit(2);
		}
	}
	pthread_sigmask(SIG_SETMASK, &threads[0].mask, NULL);
	pthread_barrier_wait(&started);
	for (int i = 1; i <= NWORKERS; i++)
		if (threads[i].fail[0]) {
			fprintf(stderr, "thread %d setup: %s\n", i, threads[i].fail);
			exit(2);
		}

	n = snprintf(buf, sizeof(buf), "%d %d %d %d\n", (int)threads[1].tid, (int)threads[2].tid,
		     (int)threads[3].tid, (int)threads[4].tid);
	if (wl_write_file("tids", buf, (size_t)n)) {
		fprintf(stderr, "cannot write tids: %s\n", strerror(errno));
		exit(2);
	}
}

/* Main keeps waking the workers until each has made progress again. */
static void await_progress(void)
{
	uint64_t before[NWORKERS + 1];
	int waiting = 1;

	for (int i = 1; i <= NWORKERS; i++)
		before[i] = load(&threads[i].progress);
	for (uint64_t n = 0; n < PROGRESS_TIMEOUT_MS / 20 && waiting; n++) {
		drive(n);
		wl_sleep_ms(20);
		waiting = 0;
		for (int i = 1; i <= NWORKERS; i++)
			if (load(&threads[i].progress) == before[i])
				waiting = 1;
	}
	for (int i = 1; i <= NWORKERS; i++)
		if (load(&threads[i].progress) == before[i])
			wl_fail("thread %d (%s, tid %d) made no progress in %d ms after SIGTERM "
				"(counter %llu, progress %llu)",
				i, threads[i].name, (int)threads[i].tid, PROGRESS_TIMEOUT_MS,
				(unsigned long long)load(&threads[i].counter),
				(unsigned long long)load(&threads[i].progress));
}

static void stop_and_join(void)
{
	struct timespec deadline;
	char path[64];

	pthread_mutex_lock(&cv_mutex);
	__atomic_store_n(&stop_workers, 1, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&cv_mutex);
	drive(1);
	__atomic_add_fetch(&futex_word, 1, __ATOMIC_RELEASE);
	syscall(SYS_futex, &futex_word, FUTEX_WAKE_PRIVATE, NWORKERS, NULL, NULL, 0);

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += JOIN_TIMEOUT_S;
	for (int i = 1; i <= NWORKERS; i++) {
		struct tstate *t = &threads[i];
		void *ret = NULL;
		int rc = pthread_timedjoin_np(t->th, &ret, &deadline);

		if (rc) {
			snprintf(path, sizeof(path), "/proc/self/task/%d", (int)t->tid);
			wl_fail("thread %d (%s, tid %d) not joined within %d s (%s): %s", i,
				t->name, (int)t->tid, JOIN_TIMEOUT_S, strerror(rc),
				access(path, F_OK) ? "it has exited: clear_child_tid not honoured?"
						   : "it still runs");
			continue;
		}
		if (ret != t)
			wl_fail("thread %d returned %p, want %p", i, ret, (void *)t);
		if (t->fail[0])
			wl_fail("thread %d (%s, tid %d): %s", i, t->name, (int)t->tid, t->fail);
	}
}

static void verify_epoll(void)
{
	struct epoll_event ev;
	uint64_t one = 1, v = 0;

	while (read(efd, &v, sizeof(v)) == sizeof(v))
		;
	if (epoll_wait(epfd, &ev, 1, 0) != 0)
		wl_fail("epoll_wait on a drained eventfd reports an event");
	if (write(efd, &one, sizeof(one)) != sizeof(one))
		wl_fail("write eventfd: %s", strerror(errno));
	if (epoll_wait(epfd, &ev, 1, 1000) != 1 || ev.data.u32 != 0xEFD)
		wl_fail("epoll_wait does not report the eventfd after a write");
	else if (read(efd, &v, sizeof(v)) != sizeof(v) || v != 1)
		wl_fail("eventfd read back %llu, want 1", (unsigned long long)v);
}

static void verify_pipe(void)
{
	struct pollfd pfd = { .fd = pipe_r, .events = POLLIN };
	char buf[64];

	while (read(pipe_r, buf, sizeof(buf)) > 0)
		;
	if (poll(&pfd, 1, 0) != 0)
		wl_fail("poll on a drained pipe reports an event");
	if (write(pipe_w, "y", 1) != 1)
		wl_fail("write pipe: %s", strerror(errno));
	if (poll(&pfd, 1, 1000) != 1 || !(pfd.revents & POLLIN))
		wl_fail("poll does not report the pipe after a write");
	else if (read(pipe_r, buf, sizeof(buf)) != 1 || buf[0] != 'y')
		wl_fail("the pipe did not read back the byte written");
}

static void verify_main(void)
{
	struct tstate *t = &threads[0];
	int rc;

	/* Thread 1 still holds M. */
	rc = pthread_mutex_trylock(&mutex_m);
	if (rc != EBUSY) {
		wl_fail("trylock(M) before the join returned %d (%s), want EBUSY: thread 1 "
			"should hold it", rc, strerror(rc));
		if (rc == 0 || rc == EOWNERDEAD)
			pthread_mutex_unlock(&mutex_m);
	} else if (mutex_m.__data.__owner != threads[1].tid) {
		wl_fail("M is owned by tid %d, want thread 1 (tid %d)", mutex_m.__data.__owner,
			(int)threads[1].tid);
	}

	await_progress();
	stop_and_join();

	/* Thread 1 unlocked M as it exited. */
	rc = pthread_mutex_trylock(&mutex_m);
	if (rc)
		wl_fail("trylock(M) after thread 1 exited returned %d (%s), want 0", rc,
			strerror(rc));
	else if ((rc = pthread_mutex_unlock(&mutex_m)))
		wl_fail("unlock(M) by main: %d", rc);

	/* The fds thread 3 waited on still work (it is gone: drain first). */
	if (pipe_mode)
		verify_pipe();
	else
		verify_epoll();

	{
		long bad = check_heap_words(heap, heap_len, 0);

		if (bad >= 0)
			wl_fail("heap: bad word at offset %ld", bad * 8);
		else if (wl_checksum(heap, heap_len) != heap_sum)
			wl_fail("heap: checksum mismatch");
	}

	t->counter = wl_counter;
	check_self(t);
	if (t->fail[0])
		wl_fail("main thread: %s", t->fail);
}

int main(int argc, char **argv)
{
	unsigned long size_mib = 64;
	struct tstate *t = &threads[0];

	wl_init(argc, argv);
	if (argc > 4 || (argc == 4 && strcmp(argv[3], "epoll") && strcmp(argv[3], "pipe"))) {
		fprintf(stderr, "usage: wl_threads STATEDIR [SIZE_MIB [epoll|pipe]]\n");
		return 2;
	}
	pipe_mode = argc == 4 && !strcmp(argv[3], "pipe");
	if (argc > 2) {
		char *end;

		size_mib = strtoul(argv[2], &end, 10);
		if (*end || size_mib < 1 || size_mib > (1UL << 20)) {
			fprintf(stderr, "SIZE_MIB must be a number from 1 to %lu\n", 1UL << 20);
			return 2;
		}
	}
	__builtin_cpu_init();
	have_avx = __builtin_cpu_supports("avx");
	have_avx512 = have_avx && __builtin_cpu_supports("avx512f");

	/* Rounded so that each worker owns a whole number of pages (at least one). */
	region_pages = size_mib * MIB / PAGE / NWORKERS;
	heap_len = region_pages * NWORKERS * PAGE;
	heap = map_or_die(heap_len);
	for (size_t i = 0; i < heap_len / 8; i++)
		((uint64_t *)heap)[i] = wl_pattern(HEAP_SEED, i);
	heap_sum = wl_checksum(heap, heap_len);

	setup();
	wl_ready();
	while (!wl_stop) {
		vector_sleep(t, TICK_MS);
		check_vectors(t);
		drive(wl_counter);
		wl_tick();
	}
	verify_main();
	wl_finish();
}
