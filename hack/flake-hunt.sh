#!/usr/bin/env bash
# The flake hunt, by hand (never in CI: it takes an hour or more): every cluster test alone, then the
# cluster and real-node suites RUNS times in random order, as `make test` runs them (the cluster
# suites on two xdist workers, then the real-node suites). Prints one line per run with its seed and result; the logs of failed runs stay in OUT.
#
#   hack/flake-hunt.sh [alone|suite|both] [RUNS]      (default: both 10)
#   OUT=/tmp/flakes  MARKER=cluster (suite runs: default "cluster or node")  SUITE_WORKERS=2
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode="${1:-both}"
runs="${2:-10}"
out="${OUT:-/tmp/breakwater-flake-hunt}"
marker="${MARKER:-cluster or node}"
workers="${SUITE_WORKERS:-2}"
mkdir -p "${out}"
pytest=(.venv/bin/pytest -p no:cacheprovider -q)
failures=0

summary() { grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed)' "$1" | tail -1; }

if [[ "${mode}" == alone || "${mode}" == both ]]; then
  mapfile -t ids < <("${pytest[@]}" -m cluster --collect-only -p no:randomly 2>/dev/null | grep '::')
  echo "== ${#ids[@]} cluster tests, each alone"
  for id in "${ids[@]}"; do
    log="${out}/alone-$(echo "${id}" | tr '/:[]' '____').log"
    if "${pytest[@]}" -p no:randomly "${id}" >"${log}" 2>&1; then
      rm -f "${log}"
    else
      failures=$((failures + 1))
      echo "FAILED alone: ${id} (log: ${log})"
    fi
  done
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
