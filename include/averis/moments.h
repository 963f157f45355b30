/* averis/moments.h — which AdamW moments a process holds. A single process
 * holds all of them; a ZeRO-1 rank (averis/dp.h) holds those of its shard
 * and of the tail only, one range after the other:
 *
 *   flat [n]:  | ... | lo[0] .. hi[0] | ... | lo[1] .. hi[1] |
 *   held:      | m[lo[0] .. hi[0])    | m[lo[1] .. hi[1])    |   [numel]
 *
 * The ranges are disjoint, range 0 before range 1, either may be empty.
 * Plain C (no compound literals): the GPU model includes it too. */
#ifndef AVERIS_MOMENTS_H
#define AVERIS_MOMENTS_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    size_t lo[2], hi[2]; /* [lo[k], hi[k]) of the flat vector */
} moment_window;

/* all n moments: [0, n) and an empty second range */
static inline moment_window moment_window_all(size_t n) {
    moment_window w;
    w.lo[0] = 0, w.hi[0] = n, w.lo[1] = w.hi[1] = n;
    return w;
}

/* the elements held */
static inline size_t moment_window_numel(const moment_window *w) { return (w->hi[0] - w->lo[0]) + (w->hi[1] - w->lo[1]); }

/* 1 when the window holds every element of a flat vector of n */
static inline int moment_window_is_all(const moment_window *w, size_t n) { return moment_window_numel(w) == n; }

/* Where the moment of flat element lo is held, for [lo, hi) inside one of
 * the ranges; SIZE_MAX when [lo, hi) is not (the window lacks some of it). */
static inline size_t moment_window_at(const moment_window *w, size_t lo, size_t hi) {
    if (lo >= w->lo[0] && hi <= w->hi[0] && lo <= hi) return lo - w->lo[0];
    if (lo >= w->lo[1] && hi <= w->hi[1] && lo <= hi) return (w->hi[0] - w->lo[0]) + (lo - w->lo[1]);
    return SIZE_MAX;
}

/* 1 when both windows hold the same ranges */
static inline int moment_window_equal(const moment_window *a, const moment_window *b) {
    return a->lo[0] == b->lo[0] && a->hi[0] == b->hi[0] && a->lo[1] == b->lo[1] && a->hi[1] == b->hi[1];
}

#endif
