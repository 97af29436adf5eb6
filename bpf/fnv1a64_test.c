/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Checks klais_device_hash() from klais_wire.h, the hash the XDP program keys
 * its per-device buckets with, against the vectors the Rust side is tested
 * against too. Built and run by tests/bpf_fnv_vectors.rs:
 *   cc -O2 -Wall -Werror -o fnv1a64_test bpf/fnv1a64_test.c && ./fnv1a64_test bpf/fnv1a64_vectors.txt
 * Prints "N vectors ok" and exits 0, or names the first mismatch and exits 1.
 */
#include <stdio.h>
#include <string.h>

#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#include "klais_wire.h"

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int main(int argc, char **argv)
{
	char line[256], idhex[64];
	unsigned long long want;
	int n = 0, lineno = 0;
	FILE *f;

	if (argc != 2) {
		fprintf(stderr, "usage: %s VECTOR_FILE\n", argv[0]);
		return 2;
	}
	f = fopen(argv[1], "r");
	if (!f) {
		perror(argv[1]);
		return 2;
	}
	while (fgets(line, sizeof(line), f)) {
		unsigned char id[KLAIS_DEVICE_ID_LEN];
		unsigned long long got;
		int i;

		lineno++;
		if (line[0] == '#' || line[0] == '\n')
			continue;
		if (sscanf(line, "%63s %llx", idhex, &want) != 2 || strlen(idhex) != 32) {
			fprintf(stderr, "line %d: malformed\n", lineno);
			return 2;
		}
		for (i = 0; i < KLAIS_DEVICE_ID_LEN; i++) {
			int hi = hexval(idhex[2 * i]), lo = hexval(idhex[2 * i + 1]);

			if (hi < 0 || lo < 0) {
				fprintf(stderr, "line %d: bad hex\n", lineno);
				return 2;
			}
			id[i] = (unsigned char)(hi << 4 | lo);
		}
		got = klais_device_hash(id);
		if (got != want) {
			fprintf(stderr, "line %d: id %s: got %016llx want %016llx\n", lineno, idhex, got, want);
			return 1;
		}
		n++;
	}
	fclose(f);
	if (n == 0) {
		fprintf(stderr, "no vectors in %s\n", argv[1]);
		return 2;
	}
	printf("%d vectors ok\n", n);
	return 0;
}
