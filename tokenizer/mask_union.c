/* The mask sampler's rounds for one map at a time, for CPUs (tokenizer/spectral.py: hard_bands_1d,
 * hard_patches, _mask_tail hold the definition; this is the same sampler on the same random draws).
 *
 * Why hand-written: the rounds are sequential and each one's trimming depends on what the earlier ones
 * covered; as torch operators every round costs a dozen operators over all maps (most of a CPU training
 * step's mask sampling), while here a round is a few loops over one small map.
 *
 * Per map (M maps of F x T cells, candidate rectangles [M, rounds]: start and width along each axis):
 * 1. rounds are added whole while each fits the deficit it meets (width <= deficit, time width <=
 *    max(1, deficit / width));
 * 2. from the first that does not, at most `final` rounds are added trimmed to the deficit's area (first in
 *    time, then in frequency; a time-trimmed rectangle keeps its start unless it would pass the map's end);
 * 3. a map still short of `goal` takes its first free cells (row-major).
 * out: [M, F, T] bytes, 1 = covered.
 */
#include <stdint.h>
#include <string.h>

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

static int64_t add_rect(uint8_t *map, int64_t T, int64_t f0, int64_t fw, int64_t t0, int64_t tw) {
    int64_t added = 0;
    for (int64_t f = f0; f < f0 + fw; ++f) {
        uint8_t *row = map + f * T;
        for (int64_t t = t0; t < t0 + tw; ++t) {
            added += !row[t];
            row[t] = 1;
        }
    }
    return added;
}

void eegfm_mask_union(int64_t M, int64_t F, int64_t T, int64_t rounds, int64_t final, int64_t goal,
                      const int64_t *fs, const int64_t *fw, const int64_t *ts, const int64_t *tw, uint8_t *out) {
    for (int64_t m = 0; m < M; ++m) {
        uint8_t *map = out + m * F * T;
        const int64_t *fsm = fs + m * rounds, *fwm = fw + m * rounds, *tsm = ts + m * rounds, *twm = tw + m * rounds;
        memset(map, 0, (size_t)(F * T));
        int64_t count = 0, r = 0;
        for (; r < rounds; ++r) {
            const int64_t deficit = goal - count;
            if (!(fwm[r] <= deficit && twm[r] <= max64(1, deficit / fwm[r]))) break;
            count += add_rect(map, T, fsm[r], fwm[r], tsm[r], twm[r]);
        }
        for (int64_t q = r; q < min64(r + final, rounds); ++q) {
            const int64_t deficit = goal - count;
            if (deficit <= 0) break;
            const int64_t fwq = min64(fwm[q], deficit);
            const int64_t twq = min64(twm[q], max64(1, deficit / max64(fwq, 1)));
            count += add_rect(map, T, fsm[q], fwq, min64(tsm[q], T - twq), twq);
        }
        for (int64_t c = 0; c < F * T && count < goal; ++c) {
            if (!map[c]) {
                map[c] = 1;
                ++count;
            }
        }
    }
}
