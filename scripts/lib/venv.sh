# Shared by scripts/start and scripts/test: create .venv and install Tollgate into it
# when missing or when pyproject.toml, setup.py or the native source changed since the last
# install (an editable install compiles tollgate/dlp/_native.c in place).
ensure_venv() {
  local extras="$1"
  local stamp=".venv/.installed$extras"
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
      || [ tollgate/dlp/_native.c -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".$extras"
    touch "$stamp"
  fi
}
