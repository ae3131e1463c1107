// SPDX-License-Identifier: GPL-2.0
/*
 * loadmod FILE [PARAM...]: load a kernel module with one finit_module(2).
 *
 * busybox insmod retries with init_module(2) when finit_module(2) fails, so
 * lib/test_lockup.ko, which fails with EAGAIN by design after its lockup,
 * would lock the CPU up twice.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	char params[1024] = "";
	int fd, i;

	if (argc < 2) {
		fprintf(stderr, "usage: loadmod FILE [PARAM...]\n");
		return 2;
	}
	for (i = 2; i < argc; i++) {
		if (strlen(params) + strlen(argv[i]) + 2 > sizeof(params)) {
			fprintf(stderr, "loadmod: parameters too long\n");
			return 2;
		}
		if (i > 2)
			strcat(params, " ");
		strcat(params, argv[i]);
	}
	fd = open(argv[1], O_RDONLY | O_CLOEXEC);
	if (fd < 0 || syscall(SYS_finit_module, fd, params, 0) != 0) {
		fprintf(stderr, "loadmod: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	return 0;
}
