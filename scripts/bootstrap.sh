# Sourced by demo.sh and test.sh: a host venv (.venv) with parity installed; environments are built on demand.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PARITY_PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/parity" ] || [ "$ROOT/pyproject.toml" -nt "$ROOT/.venv/.installed" ]; then
  "$PYTHON" -m venv "$ROOT/.venv"
  "$ROOT/.venv/bin/python" -m pip install --disable-pip-version-check -q -e "$ROOT[test]" 2> >(grep -v "^WARNING: Location" >&2)
  touch "$ROOT/.venv/.installed"
fi
export PATH="$ROOT/.venv/bin:$PATH"
cd "$ROOT"
