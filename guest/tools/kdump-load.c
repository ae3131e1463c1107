// SPDX-License-Identifier: GPL-2.0
/*
 * kdump-load CMDLINE: load /boot/vmlinuz with /boot/initrd.img as the
 * crash kernel (kexec_file_load with KEXEC_FILE_ON_CRASH), to boot with
 * CMDLINE when this kernel panics. The harness puts both files in /boot
 * on a machine with crash_kernel_mb (harness/initramfs.py). Prints
 * "kdump: loaded" and exits 0, or says which step failed and exits 1.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kexec.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int kernel, initrd;

	if (argc != 2) {
		fprintf(stderr, "usage: kdump-load CMDLINE\n");
		return 2;
	}
	kernel = open("/boot/vmlinuz", O_RDONLY);
	if (kernel < 0) {
		printf("kdump: /boot/vmlinuz: %s\n", strerror(errno));
		return 1;
	}
	initrd = open("/boot/initrd.img", O_RDONLY);
	if (initrd < 0) {
		printf("kdump: /boot/initrd.img: %s\n", strerror(errno));
		return 1;
	}
	/* The length counts the terminating NUL */
	if (syscall(SYS_kexec_file_load, kernel, initrd, strlen(argv[1]) + 1,
		    argv[1], KEXEC_FILE_ON_CRASH)) {
		printf("kdump: kexec_file_load: %s\n", strerror(errno));
		return 1;
	}
	printf("kdump: loaded\n");
	return 0;
}
