#!/usr/bin/env bash
# The flake hunt, by hand (never in CI: it takes an hour or more): every cluster test alone, then the
# cluster and real-node suites RUNS times in random order, as `make test` runs them (the cluster
# suites on two xdist workers, then the real-node suites). Prints one line per run with its seed and result; the logs of failed runs stay in OUT.
#
#   hack/flake-hunt.sh [alone|suite|both] [RUNS]      (default: both 10)
#   OUT=/tmp/flakes  MARKER=cluster (suite runs: default "cluster or node")  SUITE_WORKERS=2
#   ALONE_JOBS=2 (tests alone side by side: each process starts its own control plane)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode="${1:-both}"
runs="${2:-10}"
out="${OUT:-/tmp/breakwater-flake-hunt}"
marker="${MARKER:-cluster or node}"
workers="${SUITE_WORKERS:-2}"
alone_jobs="${ALONE_JOBS:-2}"
mkdir -p "${out}"
pytest=(.venv/bin/pytest -p no:cacheprovider -q)
failures=0

summary() { grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed)' "$1" | tail -1; }

if [[ "${mode}" == alone || "${mode}" == both ]]; then
  mapfile -t ids < <("${pytest[@]}" -m cluster --collect-only -p no:randomly 2>/dev/null | grep '::')
  echo "== ${#ids[@]} cluster tests, each alone, ${alone_jobs} at a time"
  alone() {  # one test in its own pytest process; its log is kept only if it fails
    local log="${out}/alone-$(echo "$1" | tr '/:[]' '____').log"
    local started=$SECONDS
    if "${pytest[@]}" -p no:randomly "$1" >"${log}" 2>&1; then
      rm -f "${log}"
      echo "ok alone: $1 ($((SECONDS - started)) s)"
    else
      echo "FAILED alone: $1 (log: ${log})"
    fi
  }
  export -f alone
  export out
  export pytest_cmd="${pytest[*]}"
  started=$SECONDS
  printf '%s\n' "${ids[@]}" |
    xargs -d '\n' -P "${alone_jobs}" -I{} bash -c 'pytest=(${pytest_cmd}); alone "$1"' _ {} | tee "${out}/alone.txt"
  failed_alone=$(grep -c '^FAILED alone' "${out}/alone.txt")
  echo "== alone: ${failed_alone} failed, $((SECONDS - started)) s"
  failures=$((failures + failed_alone))
fi

if [[ "${mode}" == suite || "${mode}" == both ]]; then
  for run in $(seq 1 "${runs}"); do
    log="${out}/suite-${run}.log"
    started=$SECONDS
    seed=$(( (RANDOM << 15) | RANDOM ))  # chosen here so that it is recorded even with -q
    # As make test runs them: the cluster suites on workers (a file on one), then the real-node ones.
    "${pytest[@]}" -m "cluster and (${marker})" -n "${workers}" --dist loadfile --randomly-seed="${seed}" >"${log}" 2>&1
    rc=$?
    if [[ ${rc} -eq 0 ]]; then
      "${pytest[@]}" -m "node and (${marker})" --randomly-seed="${seed}" >>"${log}" 2>&1
      rc=$?
      # A marker that leaves out the real-node suites selects nothing here: pytest's 5 is then no failure.
      [[ ${rc} -eq 5 && "${marker}" != *node* ]] && rc=0
    fi
    echo "suite run ${run}: exit ${rc}, --randomly-seed=${seed}, $((SECONDS - started)) s: $(summary "${log}")"
    if [[ ${rc} -ne 0 ]]; then
      failures=$((failures + 1))
      grep -E '^(FAILED|ERROR) ' "${log}" | sed 's/^/    /'
    else
      rm -f "${log}"
    fi
  done
fi

echo "== ${failures} failing runs"
exit $((failures > 0))
