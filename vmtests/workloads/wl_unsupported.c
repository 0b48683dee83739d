/*
 * wl_unsupported STATEDIR KIND: a process holding one thing fastcr cannot
 * save, so a dump must refuse it with one line naming the task and the fd,
 * VMA or task, and the kind, and leave the process running as it was.
 *
 * KIND:
 * - io_uring: an io_uring instance at fd 10 (io_uring_setup), its rings
 *   mapped;
 * - ptmx: a pseudo-terminal master (/dev/ptmx) at fd 10, a device that is
 *   not one of the harmless ones;
 * - ptraced: a child (pid in STATEDIR/child) that the workload traces with
 *   PTRACE_SEIZE, so the child has a tracer fastcr cannot replace.
 *
 * On SIGTERM it checks its object still works (an io_uring NOP completes;
 * the pty master answers TIOCGPTN with the same number; the child is still
 * traced by us), ends the child, and writes PASS or FAIL.
 */
#include "wl_common.h"

#include <linux/io_uring.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/wait.h>

#define OBJ_FD 10

static int ring_fd = -1;
static struct io_uring_params params;
static void *sq_ring, *cq_ring;
static struct io_uring_sqe *sqes;

static void setup_io_uring(void)
{
	int fd = (int)syscall(SYS_io_uring_setup, 4, &params);

	if (fd < 0) {
		fprintf(stderr, "io_uring_setup: %s\n", strerror(errno));
		exit(2);
	}
	if (dup2(fd, OBJ_FD) != OBJ_FD) {
		fprintf(stderr, "dup2: %s\n", strerror(errno));
		exit(2);
	}
	close(fd);
	ring_fd = OBJ_FD;
	sq_ring = mmap(NULL, params.sq_off.array + params.sq_entries * sizeof(uint32_t),
		       PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd,
		       IORING_OFF_SQ_RING);
	cq_ring = mmap(NULL, params.cq_off.cqes + params.cq_entries * sizeof(struct io_uring_cqe),
		       PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd,
		       IORING_OFF_CQ_RING);
	sqes = mmap(NULL, params.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_SQES);
	if (sq_ring == MAP_FAILED || cq_ring == MAP_FAILED || sqes == MAP_FAILED) {
		fprintf(stderr, "mmap of the rings: %s\n", strerror(errno));
		exit(2);
	}
}

/* Submits one NOP and waits for its completion. */
static void check_io_uring(void)
{
	uint32_t *sq_tail = (uint32_t *)((char *)sq_ring + params.sq_off.tail);
	uint32_t *sq_mask = (uint32_t *)((char *)sq_ring + params.sq_off.ring_mask);
	uint32_t *sq_array = (uint32_t *)((char *)sq_ring + params.sq_off.array);
	uint32_t *cq_head = (uint32_t *)((char *)cq_ring + params.cq_off.head);
	uint32_t *cq_tail = (uint32_t *)((char *)cq_ring + params.cq_off.tail);
	uint32_t tail = *sq_tail, idx = tail & *sq_mask;
	long done;

	memset(&sqes[idx], 0, sizeof(sqes[idx]));
	sqes[idx].opcode = IORING_OP_NOP;
	sqes[idx].user_data = 0xFA57;
	sq_array[idx] = idx;
	__atomic_store_n(sq_tail, tail + 1, __ATOMIC_RELEASE);
	done = syscall(SYS_io_uring_enter, ring_fd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0);
	if (done != 1) {
		wl_fail("io_uring_enter: %ld (%s)", done, strerror(errno));
		return;
	}
	if (__atomic_load_n(cq_tail, __ATOMIC_ACQUIRE) == *cq_head)
		wl_fail("io_uring: no completion for the NOP");
	else
		__atomic_store_n(cq_head, *cq_head + 1, __ATOMIC_RELEASE);
}

static int pty_number = -1;

static void setup_ptmx(void)
{
	int fd = open("/dev/ptmx", O_RDWR | O_NOCTTY);

	if (fd < 0 || dup2(fd, OBJ_FD) != OBJ_FD || ioctl(OBJ_FD, TIOCGPTN, &pty_number)) {
		fprintf(stderr, "/dev/ptmx: %s\n", strerror(errno));
		exit(2);
	}
	close(fd);
}

static void check_ptmx(void)
{
	int n = -1;

	if (ioctl(OBJ_FD, TIOCGPTN, &n) || n != pty_number)
		wl_fail("pty master answers %d (%s), was %d", n, strerror(errno), pty_number);
}

static pid_t child = -1;

static void setup_ptraced(void)
{
	char buf[32];
	int n, status;

	child = fork();
	if (child < 0) {
		fprintf(stderr, "fork: %s\n", strerror(errno));
		exit(2);
	}
	if (child == 0) {
		for (;;)
			pause();
	}
	if (ptrace(PTRACE_SEIZE, child, 0, 0)) {
		fprintf(stderr, "PTRACE_SEIZE: %s\n", strerror(errno));
		exit(2);
	}
	/* Not stopped: the child runs on, only traced. */
	if (waitpid(child, &status, WNOHANG) != 0) {
		fprintf(stderr, "the child changed state\n");
		exit(2);
	}
	n = snprintf(buf, sizeof(buf), "%d\n", (int)child);
	if (wl_write_file("child", buf, (size_t)n)) {
		fprintf(stderr, "cannot write child: %s\n", strerror(errno));
		exit(2);
	}
}

static void check_ptraced(void)
{
	char path[64], line[256];
	FILE *f;
	int tracer = -1, status;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)child);
	f = fopen(path, "r");
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "TracerPid: %d", &tracer) == 1)
			break;
	if (f)
		fclose(f);
	if (tracer != getpid())
		wl_fail("the child's tracer is %d, not us", tracer);
	kill(child, SIGKILL);
	while (waitpid(child, &status, __WALL) < 0 && errno == EINTR)
		;
}

int main(int argc, char **argv)
{
	const char *kind;

	wl_init(argc, argv);
	kind = argc > 2 ? argv[2] : "";
	if (!strcmp(kind, "io_uring"))
		setup_io_uring();
	else if (!strcmp(kind, "ptmx"))
		setup_ptmx();
	else if (!strcmp(kind, "ptraced"))
		setup_ptraced();
	else {
		fprintf(stderr, "KIND must be io_uring, ptmx or ptraced\n");
		return 2;
	}
	wl_ready();
	while (!wl_stop) {
		wl_sleep_ms(50);
		wl_tick();
	}
	if (ring_fd >= 0)
		check_io_uring();
	if (pty_number >= 0)
		check_ptmx();
	if (child > 0)
		check_ptraced();
	wl_finish();
}
