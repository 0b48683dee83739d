/*
 * wl_sleep STATEDIR: a process that is nearly always blocked in a sleeping
 * syscall, so a checkpoint catches it inside one and the restore has to
 * restart it.
 *
 * Each loop step sleeps ~100 ms to a CLOCK_MONOTONIC deadline, using in turn
 * nanosleep (relative, remaining time recomputed from the clock after EINTR),
 * clock_nanosleep(TIMER_ABSTIME) and poll() with a timeout. Invariants checked
 * at the end: the clock never went backwards between two observations, no
 * sleep that returned success ended before its deadline, every step was
 * counted once.
 */
#include "wl_common.h"

#include <poll.h>

#define STEP_NS (100 * 1000000LL)

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static struct timespec to_ts(long long ns)
{
	struct timespec ts = { ns / 1000000000LL, ns % 1000000000LL };

	return ts;
}

static long long last_seen;
static uint64_t steps_done, early_wakeups, spurious_wakeups, backwards;

static long long observe(void)
{
	long long t = now_ns();

	if (t < last_seen)
		backwards++;
	last_seen = t;
	return t;
}

/*
 * Sleeps until deadline; returns early only when SIGTERM arrived. EINTR is
 * tolerated (the remaining time is recomputed from the clock), but a sleep
 * that reports success must not end before the time it was asked for: that
 * is what a restore that botches the restart of the syscall would do.
 */
static void sleep_until(long long deadline, int how)
{
	for (;;) {
		long long t = observe();
		struct timespec ts;
		int rc;

		if (t >= deadline || wl_stop)
			return;
		switch (how) {
		case 0:
			ts = to_ts(deadline - t);
			rc = nanosleep(&ts, NULL);
			break;
		case 1:
			ts = to_ts(deadline);
			rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
			break;
		default:
			rc = poll(NULL, 0, (int)((deadline - t + 999999) / 1000000));
			break;
		}
		if (rc == 0 && observe() < deadline)
			early_wakeups++;
		else if (rc != 0 && !wl_stop)
			spurious_wakeups++;
	}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	last_seen = now_ns();
	wl_ready();
	while (!wl_stop) {
		long long deadline = observe() + STEP_NS;

		sleep_until(deadline, (int)(steps_done % 3));
		if (wl_stop)
			break;
		steps_done++;
		wl_tick();
	}
	if (backwards)
		wl_fail("CLOCK_MONOTONIC went backwards %llu times", (unsigned long long)backwards);
	if (early_wakeups)
		wl_fail("%llu sleeps reported success before their deadline",
			(unsigned long long)early_wakeups);
	if (spurious_wakeups) /* tolerated, but worth a line in the log */
		fprintf(stderr, "wl_sleep: %llu sleeps returned EINTR without SIGTERM\n",
			(unsigned long long)spurious_wakeups);
	if (steps_done != wl_counter)
		wl_fail("steps %llu != counter %llu", (unsigned long long)steps_done,
			(unsigned long long)wl_counter);
	wl_finish();
}
