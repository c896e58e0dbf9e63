#!/bin/bash
# A short libFuzzer run of every target in tests/fuzz/ (make fuzz): the lzop
# decoder, the tar index builder, the S3 XML parsers, the walfs_index.json
# loader and the sentinel parser, each from its seed corpus in
# tests/fuzz/corpus/<name>/ (copied, so the repository is not modified).
# A target passes when the run ends without a crash, leak, timeout or
# out-of-memory.  FUZZ_SECONDS (default 30) sets each run's length; skips
# (exit 77) without clang's libFuzzer.
set -uo pipefail
cd "$(dirname "$0")/.."
source tests/lib/walfs.sh
FUZZ_CC=${FUZZ_CC:-clang-14}
SECONDS_EACH=${FUZZ_SECONDS:-30}
SCRATCH=$(mktemp -d /tmp/walfs-t-fuzz.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT

if ! command -v "$FUZZ_CC" >/dev/null; then
    echo "skipping: $FUZZ_CC not found (Debian 12: apt-get install clang-14)"
    exit 77
fi
echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return d && n > 1 && d[0] == 1; }' \
    >"$SCRATCH/probe.c"
if ! "$FUZZ_CC" -fsanitize=fuzzer,address,undefined -o "$SCRATCH/probe" "$SCRATCH/probe.c" \
    >"$SCRATCH/probe.log" 2>&1; then
    echo "skipping: $FUZZ_CC cannot link -fsanitize=fuzzer: $(head -n 1 "$SCRATCH/probe.log")"
    exit 77
fi

out=$(make fuzz FUZZ_CC="$FUZZ_CC" 2>&1); rc=$?
check "make fuzz builds every target" [ $rc -eq 0 ]
[[ $rc -eq 0 ]] || { tail -n 20 <<<"$out"; t_summary; exit 1; }

dict_of() {
    case $1 in
        lzop|tar_index) echo tests/fuzz/tar.dict ;;
        index_json|sentinel) echo tests/fuzz/json.dict ;;
        s3_xml) echo tests/fuzz/xml.dict ;;
    esac
}

# One at a time: the machine's other work keeps its cores.
for src in tests/fuzz/fuzz_*.c; do
    name=$(basename "$src" .c); name=${name#fuzz_}
    work=$SCRATCH/$name
    mkdir -p "$work/corpus" "$work/artifacts"
    cp tests/fuzz/corpus/"$name"/* "$work/corpus/"
    build/fuzz/fuzz_"$name" -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 \
        -dict="$(dict_of "$name")" -artifact_prefix="$work/artifacts/" -print_final_stats=1 \
        "$work/corpus" >"$work/log" 2>&1
    rc=$?
    runs=$(grep -oE '^Done [0-9]+ runs' "$work/log" | grep -oE '[0-9]+')
    found=$(ls "$work/artifacts")
    if [[ $rc -eq 0 && -z $found && -n $runs ]]; then
        ok "fuzz_$name: $runs executions in ${SECONDS_EACH} s, no crash, leak or timeout"
    else
        not_ok "fuzz_$name (exit $rc): found ${found:-nothing, but the run failed}"
        grep -E 'ERROR|SUMMARY|^    #[0-9] ' "$work/log" | head -n 20
        for a in "$work/artifacts"/*; do
            [[ -e $a ]] && echo "input ($(stat -c %s "$a") bytes): $(head -c 300 "$a" | base64 -w0)"
        done
    fi
done
t_summary
