/* How long one read from memory takes on this machine today, by working-set size.
 *
 * Each read's address comes from the previous read (a random cycle through the buffer), so the
 * reads cannot overlap: the time per read is the latency the index's look-ups pay per miss.
 * The buffer is backed by transparent huge pages, like the server's (jemalloc), so the numbers
 * leave out page-walk costs the server does not pay either.
 *
 *   gcc -O2 -o /tmp/memory-latency bench/memory-latency.c && /tmp/memory-latency
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
    const size_t line = 64;
    const size_t sizes_mib[] = {1, 4, 16, 64, 256};
    uint64_t seed = 88172645463325252ULL;
    for (size_t s = 0; s < sizeof sizes_mib / sizeof *sizes_mib; s++) {
        size_t bytes = sizes_mib[s] << 20, n = bytes / line;
        char *buf = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (buf == MAP_FAILED) return 1;
        madvise(buf, bytes, MADV_HUGEPAGE);
        size_t *order = malloc(n * sizeof *order);
        for (size_t i = 0; i < n; i++) order[i] = i;
        for (size_t i = n - 1; i > 0; i--) { /* Fisher-Yates with xorshift */
            seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
            size_t j = seed % (i + 1), t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        for (size_t i = 0; i < n; i++)
            *(char **)(buf + order[i] * line) = buf + order[(i + 1) % n] * line;
        free(order);
        char *p = buf;
        const size_t reads = 20 * 1000 * 1000;
        for (size_t i = 0; i < n; i++) p = *(char **)p; /* warm the TLB and caches */
        double start = now();
        for (size_t i = 0; i < reads; i++) p = *(char **)p;
        double ns = (now() - start) * 1e9 / reads;
        printf("%4zu MiB: %6.1f ns per read%s\n", sizes_mib[s], ns, p == NULL ? "!" : "");
        munmap(buf, bytes);
    }
    return 0;
}
