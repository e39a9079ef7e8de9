#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: prepares the Python venv used by
# the SDK end-to-end tests (tests/py), then `cargo test --workspace --locked`.
# Extra arguments go to cargo test, e.g. `scripts/test.sh --test sdk`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$(pwd)"
venv="$root/.venv"
requirements="$root/tests/py/requirements.txt"
stamp="$venv/.requirements.installed"

venv_ok() {
    [[ -x "$venv/bin/python" ]] \
        && "$venv/bin/python" -c 'import openai, anthropic, cbor2' >/dev/null 2>&1 \
        && [[ -f "$stamp" ]] \
        && cmp -s "$requirements" "$stamp"
}

if ! venv_ok; then
    echo "test.sh: preparing $venv" >&2
    if [[ ! -x "$venv/bin/python" ]]; then
        python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    "$venv/bin/python" -c 'import openai, anthropic, cbor2'
    cp "$requirements" "$stamp"
fi

# The Postgres usage-store tests start private clusters themselves
# (crates/testkit PgCluster); they need the PostgreSQL binaries installed.
if [[ -z "${LLM_PROXY_PG_BIN:-}" ]] && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    echo "test.sh: PostgreSQL is not installed (apt-get install postgresql, or set LLM_PROXY_PG_BIN)" >&2
    exit 1
fi

export LLM_PROXY_TEST_PYTHON="$venv/bin/python"
exec cargo test --workspace --locked "$@"
