#!/usr/bin/env bash
# Runs every tests/compat/*_check.py (and *_check.js when Node is present) against one
# `mqlsync sandbox`, unchanged clients redirected only by address. Each requirements-NAME.txt
# gets its own virtual environment, target/compat-venv-NAME (the clients pin conflicting
# versions of requests), and a script runs in the one its first lines name
# (`# compat-venv: NAME`). jsforce goes to target/compat-node.
# Ends with the line "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/../.."

for req in tests/compat/requirements-*.txt; do
  name=$(basename "$req" .txt); name=${name#requirements-}
  venv=target/compat-venv-$name
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" || { echo "compat: cannot create a virtual environment"; exit 1; }
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" || { echo "compat: pip install -r $req failed"; exit 1; }
done
node_ok=0
if command -v npm >/dev/null 2>&1 && [ -f tests/compat/package.json ]; then
  if [ -d target/compat-node/node_modules/jsforce ] || npm install --silent --prefix target/compat-node jsforce@3.10.16 >/dev/null 2>&1; then
    node_ok=1
  fi
fi

cargo build --quiet --bin mqlsync || exit 1
info=$(mktemp)
target/debug/mqlsync sandbox --json --leads 700 --seed 7 >"$info" 2>target/compat-sandbox.log &
sandbox=$!
trap 'kill -TERM $sandbox 2>/dev/null; wait $sandbox 2>/dev/null; rm -f "$info"' EXIT
# Wait for the first line (bounded: 300 checks of 0.1 s), the sandbox's ready signal.
for _ in $(seq 300); do
  [ -s "$info" ] && break
  kill -0 $sandbox 2>/dev/null || { echo "compat: the sandbox exited:"; cat target/compat-sandbox.log; exit 1; }
  sleep 0.1
done
[ -s "$info" ] || { echo "compat: the sandbox printed nothing in 30 s"; exit 1; }
eval "$(python3 - "$info" <<'PY'
import json, shlex, sys
s = json.loads(open(sys.argv[1]).readline())
sf, mk = s["salesforce"], s.get("marketo", {})
for k, v in {"SF_BASE_URL": sf["base_url"], "SF_CLIENT_ID": sf["client_id"], "SF_CLIENT_SECRET": sf["client_secret"],
             "SF_USERNAME": sf["username"], "MKTO_BASE_URL": mk.get("base_url", ""), "MKTO_CLIENT_ID": mk.get("client_id", ""),
             "MKTO_CLIENT_SECRET": mk.get("client_secret", "")}.items():
    print(f"export {k}={shlex.quote(v)}")
PY
)"

passed=0; failed=0
for script in tests/compat/*_check.py; do
  echo "-- $script"
  venv=target/compat-venv-$(sed -n 's/^# compat-venv: *//p' "$script" | head -1)
  if [ ! -x "$venv/bin/python" ]; then
    echo "FAILED: $script names no installed venv (a '# compat-venv: NAME' line for requirements-NAME.txt)"
    failed=$((failed+1)); continue
  fi
  if "$venv/bin/python" "$script"; then passed=$((passed+1)); else failed=$((failed+1)); echo "FAILED: $script"; fi
done
if [ $node_ok = 1 ]; then
  for script in tests/compat/*_check.js; do
    echo "-- $script"
    if NODE_PATH=target/compat-node/node_modules node "$script"; then passed=$((passed+1)); else failed=$((failed+1)); echo "FAILED: $script"; fi
  done
else
  echo "-- jsforce checks skipped: npm is not available"
fi
echo "compat: $passed passed, $failed failed"
[ $failed = 0 ]
