#!/usr/bin/env bash
# Runs every `auth/*` client scenario of one installed conformance suite, one at a time (2 cores),
# with conformance/client as the client under test. Prints a line per scenario and a summary;
# exit 1 if any scenario fails.   usage: conformance/run-client-auth.sh [SUITE_DIR] [SKIP_REGEX]
# SUITE_DIR is the folder whose node_modules holds the suite (default conformance/, the 0.2
# alpha; conformance/v0.1 holds the newest release). SKIP_REGEX names scenarios not run.
set -uo pipefail
cd "$(dirname "$0")/.."
suite="${1:-conformance}"
skip="${2:-^$}"
export PATH="$PWD/$suite/node_modules/.bin:$PATH"
version=$(conformance --version)
out=$(mktemp -d)
pass=0; fail=0; failed=()
for s in $(conformance list 2>/dev/null | sed -n 's/^ *- \(auth\/[^ ]*\).*/\1/p'); do
  if [[ "$s" =~ $skip ]]; then echo "skip  $s"; continue; fi
  log="$out/${s//\//_}.log"
  if conformance client --command "exec conformance/client" --scenario "$s" --timeout 60000 >"$log" 2>&1; then
    echo "pass  $s"; pass=$((pass + 1))
  else
    echo "FAIL  $s"; fail=$((fail + 1)); failed+=("$s")
    grep -E "FAILURE|WARNING|error:|EXITED" "$log" | grep -v INFO | head -8 | sed 's/^/      /'
  fi
done
echo "conformance $version client auth: $pass passed, $fail failed${failed:+ (${failed[*]})}"
rm -rf "$out"
[ "$fail" -eq 0 ]
