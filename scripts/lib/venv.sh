# Shared by scripts/start and scripts/test: create .venv and install Tollgate into it
# when missing or when pyproject.toml changed since the last install.
ensure_venv() {
  local extras="$1"
  local stamp=".venv/.installed$extras"
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".$extras"
    touch "$stamp"
  fi
}
