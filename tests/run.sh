#!/bin/bash
# Runs the whole test suite and ends with one line "N passed, M failed".
#   unit tests      tests/unit/test_*.c, in the release and the ASan+UBSan build
#   integration     tests/t_*.sh: real Ceph RGW, real FUSE mounts, real PostgreSQL 15
# WALFS_TEST_ONLY=unit runs the unit tests alone; WALFS_TEST_FILTER=REGEX picks scripts.
set -u
cd "$(dirname "$0")/.."
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=66"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:print_suppressions=0"

total_passed=0
total_failed=0
failed_names=()
logdir=${WALFS_TEST_LOGDIR:-$(mktemp -d /tmp/walfs-tests.XXXXXX)}
echo "test logs: $logdir"

run_one() { # name, command...
    local name=$1; shift
    local log="$logdir/${name//\//_}.log"
    local start=$SECONDS
    "$@" >"$log" 2>&1
    local rc=$?
    local summary passed=0 failed=0
    summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
    if [[ -n $summary ]]; then
        passed=${summary%% passed*}
        failed=${summary#*passed, }; failed=${failed%% failed*}
    fi
    if [[ $rc -ne 0 && $failed -eq 0 && $rc -ne 77 ]]; then
        failed=1 # died before it could count
    fi
    grep -E '^not ok' "$log" | sed "s|^|  $name: |"
    if [[ $rc -eq 77 && $passed -eq 0 ]]; then
        echo "SKIP $name ($((SECONDS - start)) s): $(tail -n 1 "$log")"
        return
    fi
    total_passed=$((total_passed + passed))
    total_failed=$((total_failed + failed))
    if [[ $failed -ne 0 ]]; then
        failed_names+=("$name")
        echo "FAIL $name: $passed passed, $failed failed ($((SECONDS - start)) s) — last lines:"
        tail -n 25 "$log" | sed 's/^/    /'
    else
        echo "PASS $name: $passed passed ($((SECONDS - start)) s)"
    fi
}

for variant in release asan; do
    for t in build/$variant/tests/test_*; do
        [[ -x $t ]] || continue
        [[ $t == *_rgw ]] && continue # needs a server: run by its tests/t_*.sh wrapper
        run_one "$variant/$(basename "$t")" "$t"
    done
done

if [[ ${WALFS_TEST_ONLY:-} != unit ]]; then
    for script in tests/t_*.sh; do
        name=$(basename "$script" .sh)
        [[ -n ${WALFS_TEST_FILTER:-} && ! $name =~ ${WALFS_TEST_FILTER} ]] && continue
        # The WAL filesystem suite runs against both builds; the slower
        # PostgreSQL scenarios use the sanitizer build only where stated.
        # README's mode is the daemon (WALFS_MODE=daemon, tests/lib/walfs.sh):
        # the WAL, push and standby end-to-end suites run in it as well as
        # in the foreground; the outage, daemon, hostile-listing, bomb,
        # forged-index and push-lock suites only in it.
        case $name in
            t_wal_fuse)
                run_one "$name[release]" env WALFS_BIN=build/release/walfs bash "$script"
                run_one "$name[asan]" env WALFS_BIN=build/asan/walfs bash "$script"
                run_one "$name[daemon]" env WALFS_MODE=daemon WALFS_BIN=build/asan/walfs bash "$script" ;;
            t_pg_e2e|t_standby_e2e|t_backup_push)
                run_one "$name" env WALFS_BIN=${WALFS_BIN:-build/asan/walfs} bash "$script"
                run_one "$name[daemon]" env WALFS_MODE=daemon WALFS_BIN=${WALFS_BIN:-build/release/walfs} bash "$script" ;;
            t_restore_outage|t_daemon|t_faults|t_listing|t_bomb|t_backup_index_trust|t_push_lock)
                run_one "$name[daemon]" env WALFS_MODE=daemon WALFS_BIN=${WALFS_BIN:-build/asan/walfs} bash "$script" ;;
            *)
                run_one "$name" env WALFS_BIN=${WALFS_BIN:-build/asan/walfs} bash "$script" ;;
        esac
    done
fi

echo
if [[ ${#failed_names[@]} -gt 0 ]]; then
    echo "failed: ${failed_names[*]}"
fi
echo "$total_passed passed, $total_failed failed"
[[ $total_failed -eq 0 && $total_passed -gt 0 ]]
