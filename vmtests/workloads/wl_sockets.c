/*
 * wl_sockets STATEDIR [outside PATH | rights - | tcpconn PORT | tcpecho PORT]: sockets that must survive a checkpoint.
 *
 * Default mode, a parent P and its child C:
 * - in P: socketpairs of each type (STREAM, DGRAM, SEQPACKET) with data queued
 *   both ways (several messages each way for DGRAM/SEQPACKET, so boundaries
 *   matter), with O_NONBLOCK on one end, O_CLOEXEC on another, SO_PASSCRED, a
 *   larger SO_SNDBUF and a smaller SO_RCVBUF on others; a stream pair shut down
 *   half-way (one end did SHUT_WR after queueing its last words);
 * - shared with C: a SEQPACKET pair whose ends are split between P and C, each
 *   with messages queued to the other, and a STREAM pair one end of which both
 *   hold (P queued data on it from the other end, which only P holds);
 * - a unix stream listener on an abstract name and one on STATEDIR/unix.sock,
 *   each with an accepted connection (client and server end in P) with data
 *   queued both ways;
 * - a unix datagram socket connected to a bound one (not connected back);
 * - a TCP listener on 127.0.0.1:0 (SO_REUSEADDR, backlog 7), one on [::1]:0
 *   (IPV6_V6ONLY, O_NONBLOCK) and a UDP socket bound on 127.0.0.1:0; their
 *   ports go to STATEDIR/ports as "tcp4 tcp6 udp4\n" before "ready".
 * On SIGTERM P checks every queue reads back exactly (message by message), the
 * shutdown state (EOF after the last words, the other direction still works),
 * fd flags and options, a round trip on each pair, then connects to each of its
 * listeners (unix, TCP v4/v6) and sends itself a UDP datagram. If the test
 * made a connection to the TCP v4 listener (STATEDIR/client exists), P accepts
 * it, reads "ping" and answers "pong". P then SIGTERMs C, which checks its own
 * queues and flags and writes STATEDIR/result-child; P waits for C and checks
 * its exit status.
 *
 * outside PATH: connects a unix stream socket to PATH (a listener the test
 * holds), then idles: a dump must refuse it.
 * rights -: a unix socketpair with an fd in flight (SCM_RIGHTS), never read:
 * a dump must refuse it.
 * tcpconn PORT: connects TCP to 127.0.0.1:PORT, then idles: a dump must refuse
 * the established connection (without --tcp-established).
 * tcpecho PORT: connects likewise; once the 12 bytes "queued-to-wl" the test sends
 * wait unread in its receive queue it writes STATEDIR/queued; on SIGTERM it
 * reads "queued-to-wl+more" (the rest sent after the restore) and answers
 * "after".
 */
#include "wl_common.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#define NMSG 3
#define SNDBUF 100000

static const char *role = "parent";
static int sp_stream[2], sp_dgram[2], sp_seq[2], sp_shut[2];
static int xp[2], ys[2];
static int lab, lpath, cab, aab, cpath, apath;
static int tcp4, tcp6, udp4;
static int dg_recv, dg_send;
static int port4, port6, portu;
static int sndbuf_set, rcvbuf_set;

static void die(const char *what)
{
	fprintf(stderr, "%s: %s: %s\n", role, what, strerror(errno));
	_exit(2);
}

static void msg_of(char *buf, size_t len, const char *tag, int i)
{
	/* Different lengths per message, so merged boundaries would show. */
	snprintf(buf, len, "%s-%d-%.*s", tag, i, i * 7, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
}

static void send_msgs(int fd, const char *tag, int n)
{
	char buf[128];

	for (int i = 0; i < n; i++) {
		msg_of(buf, sizeof(buf), tag, i);
		if (send(fd, buf, strlen(buf), 0) != (ssize_t)strlen(buf))
			die("send");
	}
}

/* Reads n messages (or, for a stream, their bytes in one run) and compares them. */
static void expect_msgs(int fd, const char *tag, int n, int stream, const char *what)
{
	char want[4096], got[4096];
	size_t wl = 0;

	if (stream) {
		for (int i = 0; i < n; i++) {
			msg_of(want + wl, sizeof(want) - wl, tag, i);
			wl += strlen(want + wl);
		}
		size_t off = 0;
		while (off < wl) {
			ssize_t r = recv(fd, got + off, wl - off, MSG_DONTWAIT);
			if (r <= 0) {
				wl_fail("%s: %s: stream queue holds %zu bytes, want %zu (%s)", role, what,
					off, wl, r < 0 ? strerror(errno) : "EOF");
				return;
			}
			off += (size_t)r;
		}
		if (memcmp(want, got, wl))
			wl_fail("%s: %s: stream queue differs", role, what);
	} else {
		for (int i = 0; i < n; i++) {
			msg_of(want, sizeof(want), tag, i);
			ssize_t r = recv(fd, got, sizeof(got), MSG_DONTWAIT);
			if (r != (ssize_t)strlen(want) || memcmp(want, got, (size_t)r)) {
				wl_fail("%s: %s: message %d is %zd bytes (%s), want \"%s\"", role, what,
					i, r, r < 0 ? strerror(errno) : "differs", want);
				return;
			}
		}
	}
	/* Nothing more queued. */
	if (recv(fd, got, sizeof(got), MSG_DONTWAIT) >= 0 || errno != EAGAIN)
		wl_fail("%s: %s: more data than queued (or %s)", role, what, strerror(errno));
}

static void round_trip(int a, int b, const char *what)
{
	char buf[16];

	if (send(a, "rt", 2, 0) != 2 || recv(b, buf, sizeof(buf), 0) != 2 || memcmp(buf, "rt", 2))
		wl_fail("%s: %s: round trip a->b fails (%s)", role, what, strerror(errno));
	if (send(b, "tr", 2, 0) != 2 || recv(a, buf, sizeof(buf), 0) != 2 || memcmp(buf, "tr", 2))
		wl_fail("%s: %s: round trip b->a fails (%s)", role, what, strerror(errno));
}

static void expect_flags(int fd, int nonblock, int cloexec, const char *what)
{
	int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);

	if (fl < 0 || fdfl < 0 || !!(fl & O_NONBLOCK) != nonblock ||
	    !!(fdfl & FD_CLOEXEC) != cloexec)
		wl_fail("%s: %s (fd %d): O_NONBLOCK %d FD_CLOEXEC %d, want %d %d", role, what, fd,
			!!(fl & O_NONBLOCK), !!(fdfl & FD_CLOEXEC), nonblock, cloexec);
}

static int get_opt(int fd, int level, int opt)
{
	int v = -1;
	socklen_t l = sizeof(v);

	if (getsockopt(fd, level, opt, &v, &l))
		return -1;
	return v;
}

static socklen_t abstract_addr(struct sockaddr_un *a)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	int n = snprintf(a->sun_path + 1, sizeof(a->sun_path) - 1, "fastcr-wl-sockets-%d",
			 (int)wl_pid);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

static socklen_t path_addr(struct sockaddr_un *a)
{
	char p[4200];

	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	wl_path(p, sizeof(p), "unix.sock");
	if (strlen(p) >= sizeof(a->sun_path)) {
		errno = ENAMETOOLONG;
		die("STATEDIR/unix.sock");
	}
	memcpy(a->sun_path, p, strlen(p) + 1);
	return sizeof(*a);
}

/* Listener + connected client + accepted end, data queued both ways. */
static void unix_conn(struct sockaddr_un *a, socklen_t len, int *l, int *c, int *s, const char *tag)
{
	*l = socket(AF_UNIX, SOCK_STREAM, 0);
	if (*l < 0 || bind(*l, (struct sockaddr *)a, len) || listen(*l, 4))
		die("unix listener");
	*c = socket(AF_UNIX, SOCK_STREAM, 0);
	if (*c < 0 || connect(*c, (struct sockaddr *)a, len))
		die("unix connect");
	*s = accept(*l, NULL, NULL);
	if (*s < 0)
		die("accept");
	send_msgs(*c, tag, 2);
	send_msgs(*s, tag, 1);
}

static void check_unix_conn(struct sockaddr_un *a, socklen_t len, int l, int c, int s,
			    const char *tag)
{
	int c2, s2;

	expect_msgs(s, tag, 2, 1, "accepted end's queue");
	expect_msgs(c, tag, 1, 1, "client end's queue");
	round_trip(c, s, tag);
	if (get_opt(l, SOL_SOCKET, SO_ACCEPTCONN) != 1)
		wl_fail("%s: listener does not listen", tag);
	c2 = socket(AF_UNIX, SOCK_STREAM, 0);
	if (c2 < 0 || connect(c2, (struct sockaddr *)a, len)) {
		wl_fail("%s: connect to the restored listener: %s", tag, strerror(errno));
		return;
	}
	s2 = accept(l, NULL, NULL);
	if (s2 < 0)
		wl_fail("%s: accept: %s", tag, strerror(errno));
	else
		round_trip(c2, s2, "new unix connection");
	close(c2);
	close(s2);
}

static int inet_listener(int family, int *port)
{
	int fd = socket(family, SOCK_STREAM, 0), one = 1;
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (fd < 0)
		die("socket");
	memset(&ss, 0, sizeof(ss));
	if (family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;
		a->sin_family = AF_INET;
		a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		len = sizeof(*a);
	} else {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
		a->sin6_family = AF_INET6;
		a->sin6_addr = in6addr_loopback;
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
		len = sizeof(*a);
	}
	if (bind(fd, (struct sockaddr *)&ss, len) || listen(fd, 7))
		die("inet listener");
	len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len))
		die("getsockname");
	*port = ntohs(family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port :
					  ((struct sockaddr_in6 *)&ss)->sin6_port);
	return fd;
}

static int sock_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getsockname(fd, (struct sockaddr *)&ss, &len))
		return -1;
	return ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port :
					      ((struct sockaddr_in6 *)&ss)->sin6_port);
}

static void check_tcp(int l, int family, int port, const char *what)
{
	struct sockaddr_storage ss;
	socklen_t len;
	struct tcp_info ti;
	socklen_t tl = sizeof(ti);
	int c, s;

	if (sock_port(l) != port)
		wl_fail("%s: port %d, want %d", what, sock_port(l), port);
	if (getsockopt(l, IPPROTO_TCP, TCP_INFO, &ti, &tl) || ti.tcpi_state != TCP_LISTEN ||
	    ti.tcpi_sacked != 7)
		wl_fail("%s: not listening with backlog 7 (state %d backlog %u)", what,
			ti.tcpi_state, ti.tcpi_sacked);
	memset(&ss, 0, sizeof(ss));
	if (family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;
		a->sin_family = AF_INET;
		a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		a->sin_port = htons((uint16_t)port);
		len = sizeof(*a);
	} else {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
		a->sin6_family = AF_INET6;
		a->sin6_addr = in6addr_loopback;
		a->sin6_port = htons((uint16_t)port);
		len = sizeof(*a);
	}
	c = socket(family, SOCK_STREAM, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&ss, len)) {
		wl_fail("%s: connect: %s", what, strerror(errno));
		close(c);
		return;
	}
	struct pollfd p = { l, POLLIN, 0 };
	if (poll(&p, 1, 10000) != 1) {
		wl_fail("%s: no connection to accept", what);
		close(c);
		return;
	}
	s = accept(l, NULL, NULL);
	if (s < 0)
		wl_fail("%s: accept: %s", what, strerror(errno));
	else
		round_trip(c, s, what);
	close(c);
	close(s);
}

/* The test connected to the TCP v4 listener and sent "ping": answer "pong". */
static void serve_test_client(void)
{
	char path[4200], buf[8];
	struct pollfd p = { tcp4, POLLIN, 0 };
	int s;

	wl_path(path, sizeof(path), "client");
	if (access(path, F_OK))
		return;
	if (poll(&p, 1, 10000) != 1) {
		wl_fail("the test's connection is not there to accept");
		return;
	}
	s = accept(tcp4, NULL, NULL);
	if (s < 0 || recv(s, buf, 4, MSG_WAITALL) != 4 || memcmp(buf, "ping", 4) ||
	    send(s, "pong", 4, 0) != 4)
		wl_fail("the test's connection: no ping/pong (%s)", strerror(errno));
	close(s);
}

static void check_udp(void)
{
	struct sockaddr_in a;
	char buf[16];
	int c = socket(AF_INET, SOCK_DGRAM, 0);

	if (sock_port(udp4) != portu)
		wl_fail("udp: port %d, want %d", sock_port(udp4), portu);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a.sin_port = htons((uint16_t)portu);
	if (c < 0 || sendto(c, "udp!", 4, 0, (struct sockaddr *)&a, sizeof(a)) != 4)
		wl_fail("udp: sendto: %s", strerror(errno));
	struct pollfd p = { udp4, POLLIN, 0 };
	if (poll(&p, 1, 10000) != 1 || recv(udp4, buf, sizeof(buf), 0) != 4 ||
	    memcmp(buf, "udp!", 4))
		wl_fail("udp: datagram not received");
	close(c);
}

static void child_main(void)
{
	role = "child";
	wl_pid = getpid();
	send_msgs(xp[1], "c2p", 1);
	while (!wl_stop)
		wl_sleep_ms(50);
	expect_flags(xp[1], 0, 0, "shared seqpacket end");
	expect_msgs(xp[1], "p2c", 2, 0, "shared seqpacket queue");
	if (send(xp[1], "bye", 3, 0) != 3)
		wl_fail("child: send bye: %s", strerror(errno));
	/* The socket both hold: its queue stays for the parent. */
	expect_flags(ys[0], 0, 0, "socket shared with the parent");
	wl_check_task_links();
	const char *res = wl_failure[0] ? wl_failure : "PASS";
	char buf[1100];
	int n = snprintf(buf, sizeof(buf), "%s%s\n", wl_failure[0] ? "FAIL: " : "", res);
	wl_write_file("result-child", buf, (size_t)n);
	_exit(wl_failure[0] ? 1 : 0);
}

static void idle_connected(const char *mode, const char *arg)
{
	int fd;

	if (!strcmp(mode, "outside")) {
		struct sockaddr_un a;
		memset(&a, 0, sizeof(a));
		a.sun_family = AF_UNIX;
		snprintf(a.sun_path, sizeof(a.sun_path), "%s", arg);
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)))
			die("connect outside");
	} else if (!strcmp(mode, "rights")) {
		/* fd 3 sends fd 0 to fd 4, which never reads it. */
		int sv[2], passed = 0;
		char data = 'r';
		struct iovec iov = { &data, 1 };
		union {
			struct cmsghdr h;
			char buf[CMSG_SPACE(sizeof(int))];
		} u;
		struct msghdr m = { 0 };
		m.msg_iov = &iov;
		m.msg_iovlen = 1;
		m.msg_control = u.buf;
		m.msg_controllen = sizeof(u.buf);
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &passed, sizeof(int));
		if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) || sendmsg(sv[0], &m, 0) != 1)
			die("send SCM_RIGHTS");
		fd = sv[0];
		(void)arg;
	} else {
		struct sockaddr_in a;
		memset(&a, 0, sizeof(a));
		a.sin_family = AF_INET;
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		a.sin_port = htons((uint16_t)atoi(arg));
		fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)))
			die("tcp connect");
	}
	wl_ready();
	int queued = 0;
	while (!wl_stop) {
		int n = 0;
		wl_tick();
		/* tcpecho: say when the test's first bytes wait unread in our receive queue. */
		if (!strcmp(mode, "tcpecho") && !queued && !ioctl(fd, FIONREAD, &n) && n >= 12) {
			queued = 1;
			if (wl_write_file("queued", "1\n", 2))
				wl_fail("cannot write STATEDIR/queued");
		}
		wl_sleep_ms(50);
	}
	if (!strcmp(mode, "tcpecho")) {
		/* What the test sent before the dump, then after the restore; then our answer. */
		char want[] = "queued-to-wl+more", got[sizeof(want)] = "";
		size_t off = 0;
		while (off < sizeof(want) - 1) {
			struct pollfd p = { fd, POLLIN, 0 };
			ssize_t r;
			if (poll(&p, 1, 10000) != 1)
				break;
			r = recv(fd, got + off, sizeof(want) - 1 - off, 0);
			if (r <= 0)
				break;
			off += (size_t)r;
		}
		if (off != sizeof(want) - 1 || memcmp(got, want, off))
			wl_fail("tcpecho: got \"%.*s\" (%zu bytes) from the test, want \"%s\" (%s)",
				(int)off, got, off, want, strerror(errno));
		else if (send(fd, "after", 5, MSG_NOSIGNAL) != 5)
			wl_fail("tcpecho: send: %s", strerror(errno));
	}
	close(fd);
	wl_finish();
}

int main(int argc, char **argv)
{
	struct sockaddr_un aa, ap;
	socklen_t la, lp;
	pid_t child;
	int one = 1, status;
	char buf[128];

	wl_init(argc, argv);
	if (argc >= 4)
		idle_connected(argv[2], argv[3]);

	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp_stream) ||
	    socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sp_dgram) ||
	    socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp_seq) ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, sp_shut) ||
	    socketpair(AF_UNIX, SOCK_SEQPACKET, 0, xp) || socketpair(AF_UNIX, SOCK_STREAM, 0, ys))
		die("socketpair");
	send_msgs(sp_stream[0], "s01", NMSG);
	send_msgs(sp_stream[1], "s10", NMSG - 1);
	send_msgs(sp_dgram[0], "d01", NMSG);
	send_msgs(sp_dgram[1], "d10", NMSG + 1);
	send_msgs(sp_seq[0], "q01", NMSG);
	send_msgs(sp_seq[1], "q10", 1);
	fcntl(sp_stream[0], F_SETFL, O_NONBLOCK);
	if (setsockopt(sp_seq[0], SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)))
		die("SO_PASSCRED");
	sndbuf_set = SNDBUF;
	if (setsockopt(sp_stream[1], SOL_SOCKET, SO_SNDBUF, &sndbuf_set, sizeof(sndbuf_set)))
		die("SO_SNDBUF");
	sndbuf_set = get_opt(sp_stream[1], SOL_SOCKET, SO_SNDBUF);
	rcvbuf_set = 50000;
	if (setsockopt(sp_dgram[1], SOL_SOCKET, SO_RCVBUF, &rcvbuf_set, sizeof(rcvbuf_set)))
		die("SO_RCVBUF");
	rcvbuf_set = get_opt(sp_dgram[1], SOL_SOCKET, SO_RCVBUF);
	send_msgs(sp_shut[0], "last", 1);
	if (shutdown(sp_shut[0], SHUT_WR))
		die("shutdown");

	la = abstract_addr(&aa);
	unix_conn(&aa, la, &lab, &cab, &aab, "abs");
	lp = path_addr(&ap);
	unlink(ap.sun_path);
	unix_conn(&ap, lp, &lpath, &cpath, &apath, "path");
	{
		/* A datagram socket connected to a bound one that is not connected back. */
		struct sockaddr_un d;
		socklen_t dl = abstract_addr(&d);
		d.sun_path[dl - offsetof(struct sockaddr_un, sun_path)] = 0;
		strcat(d.sun_path + 1, "-dg");
		dl += 3;
		dg_recv = socket(AF_UNIX, SOCK_DGRAM, 0);
		dg_send = socket(AF_UNIX, SOCK_DGRAM, 0);
		if (dg_recv < 0 || dg_send < 0 || bind(dg_recv, (struct sockaddr *)&d, dl) ||
		    connect(dg_send, (struct sockaddr *)&d, dl))
			die("unix datagram one-way");
	}

	tcp4 = inet_listener(AF_INET, &port4);
	tcp6 = inet_listener(AF_INET6, &port6);
	fcntl(tcp6, F_SETFL, O_NONBLOCK);
	{
		struct sockaddr_in a;
		socklen_t l = sizeof(a);
		memset(&a, 0, sizeof(a));
		a.sin_family = AF_INET;
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		udp4 = socket(AF_INET, SOCK_DGRAM, 0);
		if (udp4 < 0 || bind(udp4, (struct sockaddr *)&a, sizeof(a)) ||
		    getsockname(udp4, (struct sockaddr *)&a, &l))
			die("udp");
		portu = ntohs(a.sin_port);
	}

	child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		close(xp[0]);
		child_main();
	}
	close(xp[1]);
	send_msgs(xp[0], "p2c", 2);
	send_msgs(ys[1], "shared", 2);
	{
		/* The child's message is queued before we say ready. */
		struct pollfd pc = { xp[0], POLLIN, 0 };
		if (poll(&pc, 1, 60000) != 1)
			die("wait for the child's message");
	}

	int n = snprintf(buf, sizeof(buf), "%d %d %d\n", port4, port6, portu);
	if (wl_write_file("ports", buf, (size_t)n))
		die("ports");
	wl_ready();
	while (!wl_stop) {
		wl_tick();
		wl_sleep_ms(50);
	}

	expect_flags(sp_stream[0], 1, 0, "stream end 0");
	expect_flags(sp_stream[1], 0, 0, "stream end 1");
	expect_flags(sp_dgram[0], 0, 1, "dgram end 0");
	expect_flags(tcp6, 1, 0, "tcp6 listener");
	expect_flags(tcp4, 0, 0, "tcp4 listener");
	if (get_opt(sp_stream[1], SOL_SOCKET, SO_SNDBUF) != sndbuf_set)
		wl_fail("SO_SNDBUF is %d, want %d", get_opt(sp_stream[1], SOL_SOCKET, SO_SNDBUF),
			sndbuf_set);
	if (get_opt(sp_dgram[1], SOL_SOCKET, SO_RCVBUF) != rcvbuf_set)
		wl_fail("SO_RCVBUF is %d, want %d", get_opt(sp_dgram[1], SOL_SOCKET, SO_RCVBUF),
			rcvbuf_set);
	if (get_opt(sp_seq[0], SOL_SOCKET, SO_PASSCRED) != 1 ||
	    get_opt(sp_seq[1], SOL_SOCKET, SO_PASSCRED) != 0)
		wl_fail("SO_PASSCRED not as set");
	if (get_opt(tcp4, SOL_SOCKET, SO_REUSEADDR) != 1 ||
	    get_opt(tcp6, IPPROTO_IPV6, IPV6_V6ONLY) != 1)
		wl_fail("SO_REUSEADDR/IPV6_V6ONLY not as set");

	expect_msgs(sp_stream[1], "s01", NMSG, 1, "stream 0->1");
	expect_msgs(sp_stream[0], "s10", NMSG - 1, 1, "stream 1->0");
	expect_msgs(sp_dgram[1], "d01", NMSG, 0, "dgram 0->1");
	expect_msgs(sp_dgram[0], "d10", NMSG + 1, 0, "dgram 1->0");
	expect_msgs(sp_seq[1], "q01", NMSG, 0, "seqpacket 0->1");
	expect_msgs(sp_seq[0], "q10", 1, 0, "seqpacket 1->0");
	fcntl(sp_stream[0], F_SETFL, 0);
	round_trip(sp_stream[0], sp_stream[1], "stream pair");
	round_trip(sp_dgram[0], sp_dgram[1], "dgram pair");
	round_trip(sp_seq[0], sp_seq[1], "seqpacket pair");

	/* Half shut: the last words, then EOF; the other way still works. */
	if (recv(sp_shut[1], buf, sizeof(buf), MSG_DONTWAIT) != 7 || memcmp(buf, "last-0-", 7))
		wl_fail("shut pair: last words lost");
	if (recv(sp_shut[1], buf, sizeof(buf), MSG_DONTWAIT) != 0)
		wl_fail("shut pair: no EOF after the last words (%s)", strerror(errno));
	if (send(sp_shut[0], "x", 1, MSG_NOSIGNAL) != -1 || errno != EPIPE)
		wl_fail("shut pair: the shut end can still send");
	if (send(sp_shut[1], "back", 4, 0) != 4 || recv(sp_shut[0], buf, sizeof(buf), 0) != 4)
		wl_fail("shut pair: the open direction fails");

	check_unix_conn(&aa, la, lab, cab, aab, "abs");
	check_unix_conn(&ap, lp, lpath, cpath, apath, "path");
	/* First, so that the connection check_tcp makes is the only one left to accept. */
	serve_test_client();
	check_tcp(tcp4, AF_INET, port4, "tcp4");
	fcntl(tcp6, F_SETFL, 0);
	check_tcp(tcp6, AF_INET6, port6, "tcp6");
	check_udp();
	if (send(dg_send, "one-way", 7, 0) != 7 || recv(dg_recv, buf, sizeof(buf), MSG_DONTWAIT) != 7 ||
	    memcmp(buf, "one-way", 7))
		wl_fail("one-way unix datagram socket: %s", strerror(errno));

	/* The child's end of the shared pair has its queue, ours ours. */
	kill(child, SIGTERM);
	if (recv(xp[0], buf, sizeof(buf), MSG_DONTWAIT) != 6 || memcmp(buf, "c2p-0-", 6))
		wl_fail("the child's queued message is lost");
	struct pollfd p = { xp[0], POLLIN, 0 };
	if (poll(&p, 1, 60000) != 1 || recv(xp[0], buf, sizeof(buf), 0) != 3 ||
	    memcmp(buf, "bye", 3))
		wl_fail("no bye from the child");
	if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status)) {
		char path[4200], res[1100] = "";
		wl_path(path, sizeof(path), "result-child");
		int fd = open(path, O_RDONLY);
		if (fd >= 0) {
			ssize_t r = read(fd, res, sizeof(res) - 1);
			res[r > 0 ? r : 0] = 0;
			close(fd);
		}
		wl_fail("child exited with status %#x: %s", status, res);
	}
	expect_msgs(ys[0], "shared", 2, 1, "stream queue of the socket shared with the child");
	wl_finish();
}
