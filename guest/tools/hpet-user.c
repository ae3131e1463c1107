// SPDX-License-Identifier: GPL-2.0
/*
 * hpet-user N: the two other users of HPET channels, beside the detector.
 *
 * /dev/hpet: open it until the driver has no free channel left, to list
 * every channel it hands out; on the first, ask at 64 Hz for interrupts and
 * wait for N of them. /dev/rtc0: with the RTC emulated on an HPET channel,
 * wait for two update interrupts (1 Hz). Prints:
 *
 *   hpet: handed out C1 C2 ... (then: <why the next open failed>)
 *   hpet: channel C irqs N
 *   rtc: updates 2
 *
 * or "hpet: <step>: <error>" / "rtc: <step>: <error>". Every wait has a
 * deadline (poll), so it never hangs. Exit 0 only if both worked.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/hpet.h>
#include <linux/rtc.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static int wait_irqs(int fd, int n, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	unsigned long data;
	int got = 0;

	while (got < n) {
		if (poll(&p, 1, timeout_ms) <= 0)
			break;
		if (read(fd, &data, sizeof(data)) != sizeof(data))
			break;
		got++;
	}
	return got;
}

static int hpet(int n)
{
	struct hpet_info info;
	int fds[32], nfds, fd, got, i;

	printf("hpet: handed out");
	for (nfds = 0; nfds < 32; nfds++) {
		fds[nfds] = open("/dev/hpet", O_RDONLY);
		if (fds[nfds] < 0)
			break;
		if (ioctl(fds[nfds], HPET_INFO, &info) == 0)
			printf(" %u", info.hi_timer);
	}
	printf(" (then: %s)\n", nfds < 32 ? strerror(errno) : "32 open");
	for (i = 1; i < nfds; i++)
		close(fds[i]);
	if (!nfds)
		return 1;
	fd = fds[0];
	if (ioctl(fd, HPET_INFO, &info) < 0) {
		printf("hpet: HPET_INFO: %s\n", strerror(errno));
		return 1;
	}
	if (ioctl(fd, HPET_IRQFREQ, 64UL) < 0) {
		printf("hpet: channel %u: HPET_IRQFREQ: %s\n", info.hi_timer, strerror(errno));
		return 1;
	}
	if (ioctl(fd, HPET_IE_ON, 0) < 0) {
		printf("hpet: channel %u: HPET_IE_ON: %s\n", info.hi_timer, strerror(errno));
		return 1;
	}
	got = wait_irqs(fd, n, 2000);
	ioctl(fd, HPET_IE_OFF, 0);
	close(fd);
	printf("hpet: channel %u irqs %d\n", info.hi_timer, got);
	return got < n;
}

static int rtc(void)
{
	int fd, got;

	fd = open("/dev/rtc0", O_RDONLY);
	if (fd < 0) {
		printf("rtc: open: %s\n", strerror(errno));
		return 1;
	}
	if (ioctl(fd, RTC_UIE_ON, 0) < 0) {
		printf("rtc: RTC_UIE_ON: %s\n", strerror(errno));
		return 1;
	}
	got = wait_irqs(fd, 2, 3000);
	ioctl(fd, RTC_UIE_OFF, 0);
	close(fd);
	printf("rtc: updates %d\n", got);
	return got < 2;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 16;
	int bad;

	if (n < 1 || n > 10000) {
		fprintf(stderr, "usage: hpet-user N (1..10000 interrupts)\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IONBF, 0);
	bad = hpet(n);
	bad |= rtc();
	return bad;
}
