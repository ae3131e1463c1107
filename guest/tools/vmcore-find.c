// SPDX-License-Identifier: GPL-2.0
/*
 * vmcore-find FILE TEXT...: print each distinct place in FILE where one of
 * the TEXTs starts, with what follows it up to the first byte that is not
 * printable ASCII (at most 120 bytes), one per line, at most 32 lines.
 *
 * The crash kernel runs it on /proc/vmcore: the first kernel's last
 * messages (its hard lockup report and panic, printed from NMI context)
 * never reached the console, since panic() boots the crash kernel before
 * it flushes the console, but they are in the dump's printk ring, as text.
 * It reads in chunks and keeps the tail of each, so it needs little memory
 * (a crash kernel has little) and finds a TEXT across a chunk boundary.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK	(1 << 20)
#define TAIL	256
#define MAXOUT	120
#define MAXHITS	32

static char seen[MAXHITS][MAXOUT + 1];
static int hits;

static void report(const char *p, const char *end)
{
	char line[MAXOUT + 1];
	int n = 0, i;

	while (p + n < end && n < MAXOUT && p[n] >= 0x20 && p[n] < 0x7f)
		n++;
	memcpy(line, p, n);
	line[n] = '\0';
	for (i = 0; i < hits; i++)
		if (!strcmp(seen[i], line))
			return;
	strcpy(seen[hits++], line);
	printf("%s\n", line);
}

int main(int argc, char **argv)
{
	static char buf[TAIL + CHUNK];
	size_t keep = 0;
	ssize_t got;
	int fd, t;

	if (argc < 3) {
		fprintf(stderr, "usage: vmcore-find FILE TEXT...\n");
		return 2;
	}
	fd = open(argv[1], O_RDONLY);
	if (fd < 0) {
		perror(argv[1]);
		return 1;
	}
	while (hits < MAXHITS && (got = read(fd, buf + keep, CHUNK)) > 0) {
		char *end = buf + keep + got;

		for (t = 2; t < argc; t++) {
			size_t len = strlen(argv[t]);
			char *p = buf;

			/* A match must start before the kept tail: else it is found again next time */
			while (hits < MAXHITS &&
			       (p = memmem(p, end - p, argv[t], len)) &&
			       (p < end - TAIL || got < CHUNK)) {
				report(p, end);
				p += len;
			}
		}
		keep = end - buf < TAIL ? end - buf : TAIL;
		memmove(buf, end - keep, keep);
	}
	if (got < 0) {
		perror("read");
		return 1;
	}
	return 0;
}
