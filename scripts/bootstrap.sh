# Sourced by demo.sh and test.sh: a host venv (.venv) with parity installed; environments are built on demand.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PARITY_PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/parity" ] || [ "$ROOT/pyproject.toml" -nt "$ROOT/.venv/.installed" ]; then
  started=$SECONDS
  echo "parity: setting up the host venv .venv (pydantic, typer, rich, numpy, safetensors, huggingface_hub and the" \
       "test tools; ~1 min the first time). Environments with torch are built on first use and announce themselves." >&2
  "$PYTHON" -m venv "$ROOT/.venv"
  "$ROOT/.venv/bin/python" -m pip install --disable-pip-version-check -q -e "$ROOT[test]" 2> >(grep -v "^WARNING: Location" >&2)
  touch "$ROOT/.venv/.installed"
  echo "parity: host venv ready in $((SECONDS - started))s" >&2
fi
export PATH="$ROOT/.venv/bin:$PATH"
cd "$ROOT"
