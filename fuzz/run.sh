#!/usr/bin/env bash
# Runs the libFuzzer harnesses built by `make fuzz-build` (fuzz/bin/fuzz_NAME):
# first replays every committed crash input (fuzz/regressions/NAME/*), which
# must now pass, then fuzzes each harness for SECONDS from its seed corpus
# (fuzz/corpus/NAME) and what it already found in this run.  New inputs go to
# a scratch directory, never into the committed corpus.  On a crash the input
# is kept and its path printed: commit it under fuzz/regressions/NAME/.
#
#   fuzz/run.sh SECONDS NAME...
set -euo pipefail
cd "$(dirname "$0")"
seconds=$1
shift
scratch=$(mktemp -d "${TMPDIR:-/tmp}/payments-fuzz.XXXXXX")
failed=()
# Ctrl-C ends the run, not one harness: libFuzzer exits 72 on SIGINT, which would read as a crash;
# what harnesses failed before it, and their inputs, are still reported and kept
interrupted() {
	if [ ${#failed[@]} -gt 0 ]; then
		echo "fuzzing found problems in: ${failed[*]} (scratch directory kept: $scratch)" >&2
	else
		rm -rf "$scratch"
	fi
	exit 130
}
trap interrupted INT TERM

for name in "$@"; do
	bin=bin/fuzz_$name
	if [ -d "regressions/$name" ] && [ -n "$(ls -A "regressions/$name")" ]; then
		if ! "$bin" -runs=1 regressions/"$name"/* >"$scratch/$name.replay.log" 2>&1; then
			echo "fuzz $name: a committed crash input fails again" >&2
			tail -n 30 "$scratch/$name.replay.log" >&2
			failed+=("$name")
			continue
		fi
	fi
	mkdir -p "$scratch/$name"
	if "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
		-print_final_stats=1 -artifact_prefix="$scratch/$name-" \
		"$scratch/$name" "corpus/$name" >"$scratch/$name.log" 2>&1; then
		runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$name.log")
		cov=$(grep -o 'cov: [0-9]*' "$scratch/$name.log" | tail -n 1)
		echo "fuzz $name: ${runs:-?} inputs in ${seconds}s, ${cov:-cov: ?}, no crash"
	else
		echo "fuzz $name: FAILED; the input is in $scratch/$name-*; log:" >&2
		tail -n 40 "$scratch/$name.log" >&2
		failed+=("$name")
	fi
done

if [ ${#failed[@]} -gt 0 ]; then
	echo "fuzzing found problems in: ${failed[*]} (scratch directory kept: $scratch)" >&2
	exit 1
fi
rm -rf "$scratch"
