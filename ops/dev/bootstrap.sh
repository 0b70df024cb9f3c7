# Sourced by ops/run and ops/test: make .venv with a Python >= 3.11 and install the project into
# it (with the extras named in $HSMFLEET_EXTRAS), skipping the install when nothing changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

pick_python() {
  for py in python3.13 python3.12 python3.11 python3; do
    if command -v "$py" >/dev/null 2>&1 &&
       "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  echo "hsmfleet needs Python 3.11 or newer" >&2; return 1
}

if [ ! -x .venv/bin/python ]; then
  "$(pick_python)" -m venv .venv
fi
spec=".${HSMFLEET_EXTRAS:+[$HSMFLEET_EXTRAS]}"
stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)-${HSMFLEET_EXTRAS:-none}"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"
  touch "$stamp"
fi
export PATH="$root/.venv/bin:$PATH"
