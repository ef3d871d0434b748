#!/usr/bin/env bash
# Runs the official suite's server scenarios against a Streamable HTTP MCP endpoint.
# usage: conformance/run-server.sh URL [REVISION] [SUITE_DIR]
# REVISION (default 2025-11-25) picks exactly the scenarios that spec revision requires
# (`--requirements`); SUITE_DIR is the folder whose node_modules holds the suite (default
# conformance/). Prints the suite's summary (a "✓/✗ name: N passed, M failed" line per scenario);
# exit 1 if any scenario fails.
set -uo pipefail
cd "$(dirname "$0")/.."
url="$1"
revision="${2:-2025-11-25}"
suite="${3:-conformance}"
export PATH="$PWD/$suite/node_modules/.bin:$PATH"
exec conformance server --url "$url" --requirements "$revision" --timeout 60000
