# Helpers shared by the benchmarks (sourced; bash).
now() { echo "${EPOCHREALTIME/./}"; }                  # microseconds
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b - a) / 1e6 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# Empties the page cache (as root): this VM reclaims cached pages on its
# own, so a measurement would otherwise find a varying part of its data in
# memory.
drop_page_cache() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
