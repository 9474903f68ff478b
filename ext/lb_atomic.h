/* Atomic int64 cells in memory shared by lb's worker processes (GCC/Clang builtins).
 *
 * Counters use relaxed ordering: each cell is an independent count and publishes no other
 * data, so only the atomicity of each read-modify-write matters. Claims and the rate-limit
 * TAT use compare-and-swap with sequentially consistent ordering (the default, and a single
 * `lock cmpxchg` on x86-64 either way).
 */
#ifndef LB_ATOMIC_H
#define LB_ATOMIC_H

#include <stdint.h>
#include <string.h>

static inline int64_t lb_load(int64_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline void lb_store(int64_t *p, int64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

/* Returns the value before the addition. */
static inline int64_t lb_add(int64_t *p, int64_t delta) {
    return __atomic_fetch_add(p, delta, __ATOMIC_RELAXED);
}

static inline int lb_cas(int64_t *p, int64_t expected, int64_t desired) {
    return __atomic_compare_exchange_n(
        p, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

static inline double lb_bits_to_double(int64_t bits) {
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

static inline int64_t lb_double_to_bits(double d) {
    int64_t bits;
    memcpy(&bits, &d, sizeof bits);
    return bits;
}

/* splitmix64's finalizer: spreads a key hash over the table and mixes in a salt. */
static inline uint64_t lb_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Find or claim the row of `key` (never 0) in a table of `rows` rows of `words` int64 each,
 * the key in word 0, probing linearly from key % rows for at most `probes` rows. A row once
 * claimed is never emptied, so an empty row ends the search: the key is not further on.
 * Returns the row, or -1 when the probed rows all hold other keys. */
static inline int64_t lb_find_or_claim(
    int64_t *base, int64_t rows, int64_t words, int64_t key, int64_t probes) {
    int64_t start = (int64_t)((uint64_t)key % (uint64_t)rows), i, r, k;
    if (probes > rows)
        probes = rows;
    for (i = 0; i < probes; i++) {
        r = (start + i) % rows;
        k = lb_load(base + r * words);
        if (k == 0) {
            if (lb_cas(base + r * words, 0, key))
                return r;
            k = lb_load(base + r * words); /* another process claimed it first */
        }
        if (k == key)
            return r;
    }
    return -1;
}

/* One GCRA decision on the TAT stored (as double bits) in *tat_cell: admit when the new
 * TAT, max(TAT, now) + increment, stays within `tolerance` (+ `slack`) of now, and then
 * store it with a CAS loop, so concurrent decisions on one key are serialised. *tat_out is
 * the new TAT when admitted, else max(TAT, now). */
static inline int lb_gcra(
    int64_t *tat_cell, double now, double increment, double tolerance, double slack,
    double *tat_out) {
    int64_t old_bits, new_bits;
    double tat, new_tat;
    for (;;) {
        old_bits = lb_load(tat_cell);
        tat = lb_bits_to_double(old_bits);
        if (!(tat >= now)) /* also an unused row: bits 0 are 0.0, and NaN never sticks */
            tat = now;
        new_tat = tat + increment;
        if (new_tat - tolerance - now > slack) {
            *tat_out = tat;
            return 0;
        }
        new_bits = lb_double_to_bits(new_tat);
        if (lb_cas(tat_cell, old_bits, new_bits)) {
            *tat_out = new_tat;
            return 1;
        }
    }
}

#endif
