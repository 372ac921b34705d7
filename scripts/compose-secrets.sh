#!/usr/bin/env bash
# Secrets for the docker compose stack: generated per install, never a shared default.
#
#   scripts/compose-secrets.sh [init] [ENV_FILE]   write fresh random secrets into ENV_FILE (default:
#                                                  .env next to docker-compose.yaml), mode 0600
#   scripts/compose-secrets.sh check               refuse placeholder, short or malformed secrets in
#                                                  the environment (airflow-init runs this first)
#
# docker-compose.yaml has no default for any of SECRETS below (each is `${VAR:?...}`), so compose
# refuses to start until `init` has run. `init` keeps every value already set (re-running it is
# safe), fills the missing or empty ones, and refuses a file whose values are placeholders such as
# the old `admin`/`airflow`/`minio-secret` defaults. A new .env starts as a copy of .env.example
# with AIRFLOW_UID set to your user id. Values are never printed.
#
# Changing POSTGRES_PASSWORD, S3_*, or GRAFANA_ADMIN_PASSWORD later does not change what the
# existing volumes were initialised with: `docker compose down -v` (drops all data) or change them
# in the service too (docs/deploy.md "Secrets and exposure").
set -euo pipefail

# name:kind  (kind: password = URL-safe, embedded in connection URLs; token = long random string;
# fernet = a Fernet key, 32 random bytes in URL-safe base64)
SECRETS=(
  POSTGRES_PASSWORD:password
  S3_ACCESS_KEY:password
  S3_SECRET_KEY:password
  AIRFLOW_ADMIN_PASSWORD:password
  GRAFANA_ADMIN_PASSWORD:password
  AIRFLOW_FERNET_KEY:fernet
  AIRFLOW_JWT_SECRET:token
  AIRFLOW_API_SECRET_KEY:token
)
MIN_LENGTH=16
# Values that were ever shipped as defaults (here or in upstream examples), case-insensitive.
PLACEHOLDERS=" admin airflow minio minio-secret minioadmin postgres password secret changeme change-me
  astrid-local-jwt-secret-change-me astrid-local-api-secret-change-me "

die() { echo "compose-secrets: $*" >&2; exit 2; }

random_alnum() { # random_alnum N: N characters from [A-Za-z0-9]
  local out=""
  while ((${#out} < $1)); do
    out+="$(head -c 512 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9')"
  done
  printf '%s' "${out:0:$1}"
}

generate() { # generate KIND
  case "$1" in
    password) random_alnum 32 ;;
    token) random_alnum 48 ;;
    fernet) head -c 32 /dev/urandom | base64 | tr -d '\n' | tr '+/' '-_' ;;
  esac
}

problem() { # problem NAME KIND VALUE: why VALUE is unacceptable for NAME, or nothing
  local name="$1" kind="$2" value="$3" lowered
  lowered="$(printf '%s' "${value}" | tr '[:upper:]' '[:lower:]')"
  if [[ -z "${value}" ]]; then
    echo "${name} is empty"
  elif [[ "${PLACEHOLDERS}" == *" ${lowered} "* || "${lowered}" == *change-me* || "${lowered}" == *changeme* ]]; then
    echo "${name} is a known placeholder"
  elif [[ "${kind}" == fernet ]]; then
    [[ "${value}" =~ ^[A-Za-z0-9_-]{43}=$ ]] || echo "${name} is not a Fernet key (44 characters of URL-safe base64)"
  elif ((${#value} < MIN_LENGTH)); then
    echo "${name} is shorter than ${MIN_LENGTH} characters"
  elif [[ "${kind}" == password && ! "${value}" =~ ^[A-Za-z0-9._~-]+$ ]]; then
    echo "${name} may only use A-Z a-z 0-9 . _ ~ - (it is embedded in connection URLs)"
  fi
}

check_all() { # check_all NAME=VALUE...: one line per problem on stderr; status 2 if any
  local failed=0 entry name value kind seen="" why
  for entry in "$@"; do
    name="${entry%%=*}"
    value="${entry#*=}"
    kind="$(kind_of "${name}")"
    why="$(problem "${name}" "${kind}" "${value}")"
    if [[ -n "${why}" ]]; then
      echo "compose-secrets: ${why}" >&2
      failed=1
    elif [[ "${seen}" == *$'\n'"${value}"$'\n'* ]]; then
      echo "compose-secrets: ${name} repeats another secret's value; each secret must be different" >&2
      failed=1
    fi
    seen+=$'\n'"${value}"$'\n'
  done
  return $((failed * 2))
}

kind_of() {
  local spec
  for spec in "${SECRETS[@]}"; do
    [[ "${spec%%:*}" == "$1" ]] && { echo "${spec#*:}"; return; }
  done
}

read_value() { # read_value FILE NAME: the last NAME=... line's value, quotes removed ("" if none)
  local line value=""
  while IFS= read -r line || [[ -n "${line}" ]]; do
    if [[ "${line}" == "$2="* ]]; then
      value="${line#*=}"
      value="${value%$'\r'}"
      if [[ "${value}" =~ ^\"(.*)\"$ || "${value}" =~ ^\'(.*)\'$ ]]; then
        value="${BASH_REMATCH[1]}"
      fi
    fi
  done <"$1"
  printf '%s' "${value}"
}

cmd_check() {
  local entries=() spec name
  for spec in "${SECRETS[@]}"; do
    name="${spec%%:*}"
    entries+=("${name}=${!name:-}")
  done
  if ! check_all "${entries[@]}"; then
    die "refusing to start with these secrets: run scripts/compose-secrets.sh on the host (docs/deploy.md)"
  fi
  echo "compose-secrets: ${#SECRETS[@]} secrets present, none a placeholder"
}

cmd_init() {
  local root env_file tmp spec name kind value entries=() generated=() kept=()
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  env_file="${1:-${root}/.env}"
  [[ -d "${env_file}" ]] && die "${env_file} is a directory; give the path of the .env file"
  tmp="$(mktemp "${env_file}.XXXXXX")"
  trap 'rm -f "${tmp}" "${tmp}.new"' EXIT
  chmod 600 "${tmp}"
  if [[ -f "${env_file}" ]]; then
    cat "${env_file}" >"${tmp}"
  elif [[ -f "${root}/.env.example" ]]; then
    sed "s/^AIRFLOW_UID=.*/AIRFLOW_UID=$(id -u)/" "${root}/.env.example" >"${tmp}"
  else
    echo "AIRFLOW_UID=$(id -u)" >"${tmp}"
  fi
  [[ -z "$(tail -c 1 "${tmp}")" ]] || echo >>"${tmp}"

  for spec in "${SECRETS[@]}"; do
    name="${spec%%:*}"
    kind="${spec#*:}"
    value="$(read_value "${tmp}" "${name}")"
    if [[ -n "${value}" ]]; then
      kept+=("${name}")
    else
      value="$(generate "${kind}")"
      # fill the first empty `NAME=` line in place (the .env.example slot), or append one
      SECRET_NAME="${name}" SECRET_VALUE="${value}" awk '
        !done && ($0 == ENVIRON["SECRET_NAME"] "=" || $0 == ENVIRON["SECRET_NAME"] "=\"\"") {
          print ENVIRON["SECRET_NAME"] "=" ENVIRON["SECRET_VALUE"]; done = 1; next
        }
        { print }
        END { if (!done) print ENVIRON["SECRET_NAME"] "=" ENVIRON["SECRET_VALUE"] }
      ' "${tmp}" >"${tmp}.new"
      chmod 600 "${tmp}.new"
      mv "${tmp}.new" "${tmp}"
      generated+=("${name}")
    fi
    entries+=("${name}=${value}")
  done
  if ! check_all "${entries[@]}"; then
    die "${env_file}: fix or delete the lines named above, then run this again (nothing was written)"
  fi
  mv "${tmp}" "${env_file}"
  trap - EXIT
  echo "compose-secrets: ${env_file} (mode 600): generated ${#generated[@]} [${generated[*]:-}], kept ${#kept[@]} [${kept[*]:-}]"
}

case "${1:-init}" in
  init) shift || true; cmd_init "$@" ;;
  check) cmd_check ;;
  -h | --help) sed -n '2,17p' "${BASH_SOURCE[0]}" ;;
  *) die "unknown command '$1' (use: init [ENV_FILE] | check)" ;;
esac
