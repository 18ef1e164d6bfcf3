#!/usr/bin/env bash
# tests/fuzz/run.sh - build the libFuzzer harnesses with clang and run each on
# its seed corpus for FUZZ_SECONDS (default 30) seconds.
#
#   FUZZ_SECONDS=60 tests/fuzz/run.sh
#
# Builds into build-fuzz/ (clang, -DEVENTLY_FUZZ=ON, Debug). New inputs the
# fuzzer finds go to build-fuzz/corpus/<target>/ (the committed seeds in
# tests/fuzz/corpus/<target>/ are read, never written); a crashing input is
# saved under build-fuzz/artifacts/<target>/ and printed in hex. Replay one
# with ./build-fuzz/fuzz_<target> <file>. Exits non-zero if any target
# crashed, leaked, hung or failed to build; the last line says
# "fuzz_<target>: N passed, M failed" for each target.
set -u
cd "$(dirname "$0")/../.."

seconds=${FUZZ_SECONDS:-30}
targets=(http ws json early)

if ! command -v clang >/dev/null 2>&1; then
  echo "run.sh: clang not found; installing it from Debian" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y clang >/dev/null 2>&1 || { apt-get update && apt-get install -y clang; } || {
    echo "run.sh: could not install clang" >&2
    exit 2
  }
fi

summary=()
status=0
if ! cmake -S . -B build-fuzz -G Ninja -DCMAKE_C_COMPILER=clang -DEVENTLY_FUZZ=ON \
    -DCMAKE_BUILD_TYPE=Debug >build-fuzz.cmake.log 2>&1; then
  cat build-fuzz.cmake.log >&2
  for t in "${targets[@]}"; do echo "fuzz_$t: 0 passed, 1 failed (cmake)"; done
  exit 1
fi
rm -f build-fuzz.cmake.log

for t in "${targets[@]}"; do
  bin=build-fuzz/fuzz_$t
  if ! ninja -C build-fuzz "fuzz_$t"; then
    summary+=("fuzz_$t: 0 passed, 1 failed (build)")
    status=1
    continue
  fi
  work=build-fuzz/corpus/$t
  artifacts=build-fuzz/artifacts/$t/
  mkdir -p "$work" "$artifacts"
  dict=()
  [ -f "tests/fuzz/$t.dict" ] && dict=(-dict="tests/fuzz/$t.dict")
  echo "run.sh: fuzzing $t for ${seconds}s"
  # -timeout: an input taking over 10 s is a hang, reported like a crash
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    "$bin" -max_total_time="$seconds" -timeout=10 -max_len=4096 -print_final_stats=1 \
    -artifact_prefix="$artifacts" "${dict[@]}" "$work" "tests/fuzz/corpus/$t"
  rc=$?
  if [ "$rc" -eq 0 ]; then
    summary+=("fuzz_$t: 1 passed, 0 failed")
  else
    status=1
    summary+=("fuzz_$t: 0 passed, 1 failed (exit $rc)")
    for f in "$artifacts"*; do
      [ -f "$f" ] || continue
      echo "run.sh: crashing input $f ($(wc -c <"$f") bytes):"
      od -A d -t x1z -v "$f" | head -40
    done
  fi
done

printf '%s\n' "${summary[@]}"
exit "$status"
