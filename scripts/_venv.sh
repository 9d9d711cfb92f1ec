# Sourced by scripts/demo and scripts/test: make (once) and activate the project venv.
# The first run installs every dependency (about a minute on a fresh machine): it says so, and what,
# on stderr, instead of a long silence.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EGW_VENV:-$ROOT/.venv}"
_say() { printf 'egw setup: %s\n' "$*" >&2; }
if [ ! -x "$VENV/bin/python" ]; then
  _say "creating a Python environment in $VENV (once)"
  python3 -m venv "$VENV"
fi
# Re-install when pyproject.toml changed since the last install.
STAMP="$VENV/.egw-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  started=$SECONDS
  if [ -f "$STAMP" ]; then
    _say "pyproject.toml changed since the last install: updating the environment"
  fi
  _say "upgrading pip"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  deps="$("$VENV/bin/python" - "$ROOT/pyproject.toml" <<'EOF'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
names = [re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0] for d in project["dependencies"] + project["optional-dependencies"]["test"]]
print(", ".join(names))
EOF
)"
  _say "installing egw and its dependencies (takes about a minute the first time): $deps"
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test]"
  touch "$STAMP"
  _say "environment ready in $((SECONDS - started)) s"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
