/*
 * wl_signals STATEDIR: signal dispositions, the blocked mask and the
 * alternate stack must survive.
 *
 * - SIGUSR1: SA_SIGINFO|SA_ONSTACK|SA_RESTART handler, sa_mask {SIGUSR2, SIGHUP};
 * - SIGUSR2 and SIGRTMIN+1 blocked;
 * - SIGPIPE ignored;
 * - a 64 KiB sigaltstack.
 * At the end every sigaction (as read back at start, so glibc's SA_RESTORER
 * and restorer address are included), the mask and the altstack are compared,
 * then SIGUSR1 is raised: the handler must run, on the alternate stack.
 */
#include "wl_common.h"

#include <sys/mman.h>

#define ALT_LEN (64 * 1024UL)
#ifndef SA_RESTORER
#define SA_RESTORER 0x04000000 /* x86-64 uapi value; glibc hides the name */
#endif

static volatile sig_atomic_t usr1_count;
static volatile uintptr_t usr1_local_addr;
static volatile int usr1_code;

static void usr1_handler(int sig, siginfo_t *info, void *uctx)
{
	volatile int local = sig;

	(void)uctx;
	usr1_local_addr = (uintptr_t)&local;
	usr1_code = info->si_code;
	usr1_count++;
}

static int kernel_sigaction(int sig, struct sigaction *out)
{
	return sigaction(sig, NULL, out);
}

static void compare_action(int sig, const struct sigaction *want)
{
	struct sigaction now;

	if (kernel_sigaction(sig, &now)) {
		wl_fail("sigaction(%d): %s", sig, strerror(errno));
		return;
	}
	if ((void *)now.sa_sigaction != (void *)want->sa_sigaction)
		wl_fail("signal %d: handler %p, want %p", sig, (void *)now.sa_sigaction,
			(void *)want->sa_sigaction);
	if (now.sa_flags != want->sa_flags)
		wl_fail("signal %d: flags %#x, want %#x", sig, now.sa_flags, want->sa_flags);
	if ((void *)now.sa_restorer != (void *)want->sa_restorer)
		wl_fail("signal %d: restorer %p, want %p", sig, (void *)now.sa_restorer,
			(void *)want->sa_restorer);
	for (int s = 1; s < NSIG; s++)
		if (sigismember(&now.sa_mask, s) != sigismember(&want->sa_mask, s))
			wl_fail("signal %d: sa_mask differs at signal %d", sig, s);
}

int main(int argc, char **argv)
{
	static const int watched[] = { SIGUSR1, SIGUSR2, SIGPIPE, SIGHUP, SIGTERM, SIGINT };
	struct sigaction want[sizeof(watched) / sizeof(watched[0])];
	struct sigaction sa;
	sigset_t block, mask_start, mask_now;
	stack_t alt, alt_start, alt_now;
	uint8_t *alt_mem;

	wl_init(argc, argv);

	alt_mem = mmap(NULL, ALT_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (alt_mem == MAP_FAILED) {
		fprintf(stderr, "mmap: %s\n", strerror(errno));
		return 2;
	}
	alt.ss_sp = alt_mem;
	alt.ss_size = ALT_LEN;
	alt.ss_flags = 0;
	if (sigaltstack(&alt, NULL)) {
		fprintf(stderr, "sigaltstack: %s\n", strerror(errno));
		return 2;
	}

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = usr1_handler;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGUSR2);
	sigaddset(&sa.sa_mask, SIGHUP);
	if (sigaction(SIGUSR1, &sa, NULL)) {
		fprintf(stderr, "sigaction: %s\n", strerror(errno));
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);

	sigemptyset(&block);
	sigaddset(&block, SIGUSR2);
	sigaddset(&block, SIGRTMIN + 1);
	sigprocmask(SIG_BLOCK, &block, NULL);

	/* The handler works before the checkpoint too. */
	raise(SIGUSR1);
	if (usr1_count != 1)
		wl_fail("SIGUSR1 handler did not run before the checkpoint");

	for (size_t i = 0; i < sizeof(watched) / sizeof(watched[0]); i++)
		kernel_sigaction(watched[i], &want[i]);
	sigprocmask(SIG_BLOCK, NULL, &mask_start);
	sigaltstack(NULL, &alt_start);

	wl_ready();
	while (!wl_stop) {
		wl_sleep_ms(50);
		wl_tick();
	}

	for (size_t i = 0; i < sizeof(watched) / sizeof(watched[0]); i++)
		compare_action(watched[i], &want[i]);
	if (want[0].sa_flags != (SA_SIGINFO | SA_ONSTACK | SA_RESTART | SA_RESTORER))
		wl_fail("SIGUSR1 flags at start %#x, want SIGINFO|ONSTACK|RESTART|RESTORER",
			want[0].sa_flags);
	if (want[2].sa_handler != SIG_IGN)
		wl_fail("SIGPIPE was not ignored at start");

	sigprocmask(SIG_BLOCK, NULL, &mask_now);
	for (int s = 1; s < NSIG; s++)
		if (sigismember(&mask_now, s) != sigismember(&mask_start, s))
			wl_fail("blocked mask differs at signal %d", s);
	if (!sigismember(&mask_now, SIGUSR2) || !sigismember(&mask_now, SIGRTMIN + 1))
		wl_fail("SIGUSR2 or SIGRTMIN+1 is no longer blocked");

	sigaltstack(NULL, &alt_now);
	if (alt_now.ss_sp != alt_start.ss_sp || alt_now.ss_size != alt_start.ss_size ||
	    alt_now.ss_flags != alt_start.ss_flags)
		wl_fail("sigaltstack: sp %p size %zu flags %d, want sp %p size %zu flags %d",
			alt_now.ss_sp, alt_now.ss_size, alt_now.ss_flags, alt_start.ss_sp,
			alt_start.ss_size, alt_start.ss_flags);

	usr1_local_addr = 0;
	raise(SIGUSR1);
	if (usr1_count != 2)
		wl_fail("SIGUSR1 handler ran %d times, want 2", (int)usr1_count);
	else if (usr1_local_addr < (uintptr_t)alt_mem ||
		 usr1_local_addr >= (uintptr_t)alt_mem + ALT_LEN)
		wl_fail("SIGUSR1 handler ran off the alternate stack (local at %#lx)",
			(unsigned long)usr1_local_addr);
	else if (usr1_code != SI_TKILL)
		wl_fail("SIGUSR1 si_code %d, want SI_TKILL", usr1_code);
	wl_finish();
}
