/*
 * Guest workload for the kvm.live_migration lab: PID 1 of a tiny initramfs.
 *
 * Reads its settings from the kernel command line:
 *   kvmlm.touch_mib=N   MiB filled with non-zero data once at boot (default: kvmlm.mib)
 *   kvmlm.mib=N         working set that is dirtied, in MiB (default 64)
 *   kvmlm.rate=N        pages dirtied per second; 0 = idle, -1 = as fast as possible (default 0)
 *   kvmlm.tick_ms=N     interval between counter lines (default 200)
 *   kvmlm.sweep_ms=N    interval between two verifications of every stamped page (default 2000)
 *   kvmlm.burst_ms=N    with kvmlm.quiet_ms: dirty at kvmlm.rate for N ms, then nothing for kvmlm.quiet_ms ms, over
 *   kvmlm.quiet_ms=N    and over (a bursty writer; default 0: always at kvmlm.rate)
 *
 * It checks its own memory. Every page it owns carries a stamp at both ends: the page's index and a
 * generation that the guest also keeps in a table of its own. Each rewrite of a page first verifies
 * the stamp, then bumps the generation; a sweep verifies every page every kvmlm.sweep_ms. A write that
 * a migration lost leaves an older generation in the page (or the table), and is counted as bad.
 *
 * Prints "KVMLM boot=<boot id> tick=<n> dirtied=<pages> swept=<sweeps> bad=<pages> ms=<guest ms>" on the console
 * every tick, so a test can prove that the same guest (same boot id) kept running across a migration
 * (tick never resets) and that its memory arrived intact (bad stays 0 through a sweep after arrival);
 * and "KVMLM mismatch page=..." for the first mismatches it finds.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define SLICE_NS 10000000L /* rate control slice: 10 ms */

static long param(const char *cmdline, const char *key, long fallback)
{
    const char *p = strstr(cmdline, key);
    if (!p)
        return fallback;
    return strtol(p + strlen(key), NULL, 10);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t deadline)
{
    struct timespec ts = {.tv_sec = deadline / 1000000000ULL, .tv_nsec = deadline % 1000000000ULL};
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void read_file(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, buf, len - 1) : -1;
    buf[n > 0 ? n : 0] = '\0';
    if (fd >= 0)
        close(fd);
    char *nl = strchr(buf, '\n');
    if (nl)
        *nl = '\0';
}

#define STAMP_TAG 0x4b564d4c00000000ULL /* "KVML" in the high half, the page index in the low */
#define MAX_REPORTS 8

struct stamp {
    uint64_t tag;
    uint64_t generation;
};

struct pages {
    unsigned char *mem;
    uint32_t *generation; /* what each page's stamp must say */
    size_t count;
    uint64_t bad, reported;
};

static struct stamp *head_of(struct pages *pages, size_t page)
{
    return (struct stamp *)(pages->mem + page * PAGE);
}

static struct stamp *tail_of(struct pages *pages, size_t page)
{
    return (struct stamp *)(pages->mem + page * PAGE + PAGE - sizeof(struct stamp));
}

static void stamp(struct pages *pages, size_t page)
{
    struct stamp mark = {.tag = STAMP_TAG | page, .generation = pages->generation[page]};
    *head_of(pages, page) = mark;
    *tail_of(pages, page) = mark;
}

/* Counts a page whose stamps disagree with the table, reports the first ones, and stamps it anew so
 * that one lost write counts once. */
static void verify(struct pages *pages, size_t page)
{
    struct stamp head = *head_of(pages, page), tail = *tail_of(pages, page);
    uint64_t want = pages->generation[page];
    if (head.tag == (STAMP_TAG | page) && tail.tag == head.tag && head.generation == want &&
        tail.generation == want)
        return;
    pages->bad++;
    if (pages->reported++ < MAX_REPORTS)
        dprintf(1, "KVMLM mismatch page=%zu want=%llu head=%llx/%llu tail=%llx/%llu\n", page,
                (unsigned long long)want, (unsigned long long)head.tag, (unsigned long long)head.generation,
                (unsigned long long)tail.tag, (unsigned long long)tail.generation);
    stamp(pages, page);
}

static void rewrite(struct pages *pages, size_t page, uint64_t *seed)
{
    verify(pages, page);
    pages->generation[page]++;
    stamp(pages, page);
    /* and a word in between, so that the page's contents keep changing */
    *(uint64_t *)(pages->mem + page * PAGE + 16 + (xorshift(seed) % ((PAGE - 40) / 8)) * 8) = *seed;
}

static void sweep(struct pages *pages)
{
    for (size_t page = 0; page < pages->count; page++)
        verify(pages, page);
}

int main(void)
{
    char cmdline[4096], boot_id[64], line[200];

    mount("proc", "/proc", "proc", 0, NULL);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    read_file("/proc/cmdline", cmdline, sizeof cmdline);
    read_file("/proc/sys/kernel/random/boot_id", boot_id, sizeof boot_id);
    boot_id[8] = '\0';

    long mib = param(cmdline, "kvmlm.mib=", 64);
    long touch_mib = param(cmdline, "kvmlm.touch_mib=", mib);
    long rate = param(cmdline, "kvmlm.rate=", 0);
    long tick_ms = param(cmdline, "kvmlm.tick_ms=", 200);
    long sweep_ms = param(cmdline, "kvmlm.sweep_ms=", 2000);
    uint64_t burst_ns = (uint64_t)param(cmdline, "kvmlm.burst_ms=", 0) * 1000000ULL;
    uint64_t quiet_ns = (uint64_t)param(cmdline, "kvmlm.quiet_ms=", 0) * 1000000ULL;
    size_t bytes = (size_t)(touch_mib > mib ? touch_mib : mib) << 20;
    size_t working_pages = ((size_t)mib << 20) / PAGE;
    uint64_t seed = now_ns() | 1;

    struct pages pages = {.count = bytes / PAGE};
    pages.mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    pages.generation = mmap(NULL, pages.count * sizeof(uint32_t), PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (pages.mem == MAP_FAILED || pages.generation == MAP_FAILED) {
        dprintf(1, "KVMLM error: cannot map %ld MiB\n", touch_mib);
        for (;;)
            pause();
    }
    for (size_t off = 0; off < ((size_t)touch_mib << 20); off += 8)
        *(uint64_t *)(pages.mem + off) = xorshift(&seed);
    for (size_t page = 0; page < pages.count; page++)
        stamp(&pages, page);
    dprintf(1, "KVMLM ready boot=%s mib=%ld touch_mib=%ld rate=%ld pages=%zu\n", boot_id, mib, touch_mib, rate,
            pages.count);

    uint64_t tick = 0, dirtied = 0, sweeps = 0, started = now_ns();
    uint64_t next_tick = now_ns(), slice_end = now_ns(), next_sweep = now_ns() + (uint64_t)sweep_ms * 1000000ULL;
    long per_slice = rate > 0 ? (rate * SLICE_NS + 999999999L) / 1000000000L : 0;
    for (;;) {
        uint64_t cycle_at = burst_ns && quiet_ns ? (now_ns() - started) % (burst_ns + quiet_ns) : 0;
        int quiet = cycle_at >= burst_ns && burst_ns && quiet_ns;
        if (rate != 0 && working_pages > 0 && !quiet) {
            long batch = rate > 0 ? per_slice : 256;
            for (long i = 0; i < batch; i++, dirtied++)
                rewrite(&pages, xorshift(&seed) % working_pages, &seed);
        }
        uint64_t t = now_ns();
        if (t >= next_sweep) {
            sweep(&pages);
            sweeps++;
            next_sweep = now_ns() + (uint64_t)sweep_ms * 1000000ULL;
        }
        if (t >= next_tick) {
            int n = snprintf(line, sizeof line, "KVMLM boot=%s tick=%llu dirtied=%llu swept=%llu bad=%llu ms=%llu\n",
                             boot_id, (unsigned long long)tick++, (unsigned long long)dirtied,
                             (unsigned long long)sweeps, (unsigned long long)pages.bad,
                             (unsigned long long)((t - started) / 1000000ULL));
            write(1, line, (size_t)n);
            next_tick += (uint64_t)tick_ms * 1000000ULL;
            if (next_tick < t)
                next_tick = t + (uint64_t)tick_ms * 1000000ULL;
        }
        if (quiet) { /* wait, idle, for the next line, sweep or burst */
            uint64_t wake = now_ns() + (burst_ns + quiet_ns - cycle_at);
            wake = next_tick < wake ? next_tick : wake;
            sleep_until(next_sweep < wake ? next_sweep : wake);
            slice_end = now_ns();
        } else if (rate > 0) {
            slice_end += SLICE_NS;
            if (slice_end < t) /* fell behind (e.g. throttled): do not try to catch up */
                slice_end = t + SLICE_NS;
            sleep_until(slice_end);
        } else if (rate == 0) {
            sleep_until(next_tick < next_sweep ? next_tick : next_sweep);
        }
    }
}
