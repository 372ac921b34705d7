#!/bin/sh
# Alertmanager for AstrID: render its configuration from the environment, then exec alertmanager.
#
# Alertmanager's own config file cannot read environment variables, and the alert recipients
# (ASTRID_INFERENCE_ALERT_EMAIL), the SMTP server and the optional Slack webhook differ per
# install, so docker-compose.yaml starts the prom/alertmanager image with this script (POSIX sh:
# the image is busybox). Every value is validated and quoted before it goes into the YAML; a bad
# value stops the container with one line naming the variable.
#
#   ALERT_EMAIL_TO        required: address[, address...]   (compose: ASTRID_INFERENCE_ALERT_EMAIL)
#   ALERT_EMAIL_FROM      sender address (default astrid-alerts@astrid.local)
#   SMTP_SMARTHOST        host:port (default mailpit:1025)
#   SMTP_REQUIRE_TLS      true|false (default false: Mailpit; use true for a real SMTP relay)
#   SMTP_AUTH_USERNAME / SMTP_AUTH_PASSWORD   optional SMTP login
#   SLACK_WEBHOOK_URL     optional https:// incoming-webhook URL; empty = no Slack
#   ALERTMANAGER_CONFIG_DIR  where the rendered files go (default /tmp/astrid-alertmanager)
#
# `run-alertmanager.sh --render-only` writes the files and prints the config path (tests use it);
# any other arguments are passed to alertmanager.
set -eu

dir="${ALERTMANAGER_CONFIG_DIR:-/tmp/astrid-alertmanager}"
to="${ALERT_EMAIL_TO:-}"
from="${ALERT_EMAIL_FROM:-astrid-alerts@astrid.local}"
smarthost="${SMTP_SMARTHOST:-mailpit:1025}"
require_tls="${SMTP_REQUIRE_TLS:-false}"
auth_user="${SMTP_AUTH_USERNAME:-}"
auth_password="${SMTP_AUTH_PASSWORD:-}"
slack="${SLACK_WEBHOOK_URL:-}"

die() { echo "run-alertmanager: $*" >&2; exit 2; }
matches() { printf '%s' "$1" | grep -Eqx "$2"; }
# YAML single-quoted scalar: double every single quote. Newlines are refused before this.
quote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/''/g")"; }

addr='[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+'
for var in ALERT_EMAIL_TO ALERT_EMAIL_FROM SMTP_SMARTHOST SMTP_AUTH_USERNAME SMTP_AUTH_PASSWORD SLACK_WEBHOOK_URL; do
  eval "value=\${${var}:-}"
  case "${value}" in *"
"*) die "${var} must be one line" ;; esac
done
matches "${to}" "${addr}( *, *${addr})*" \
  || die "ALERT_EMAIL_TO='${to}' must be one or more email addresses separated by commas (compose: ASTRID_INFERENCE_ALERT_EMAIL)"
matches "${from}" "${addr}" || die "ALERT_EMAIL_FROM='${from}' must be one email address"
matches "${smarthost}" '[A-Za-z0-9.-]+:[0-9]{1,5}' || die "SMTP_SMARTHOST='${smarthost}' must be host:port"
case "${require_tls}" in true | false) ;; *) die "SMTP_REQUIRE_TLS='${require_tls}' must be true or false" ;; esac
if [ -n "${auth_password}" ] && [ -z "${auth_user}" ]; then
  die "SMTP_AUTH_PASSWORD is set without SMTP_AUTH_USERNAME"
fi
if [ -n "${slack}" ]; then
  matches "${slack}" 'https?://[^[:space:]]+' || die "SLACK_WEBHOOK_URL must be an http(s) URL"
fi

umask 077
mkdir -p "${dir}"
config="${dir}/alertmanager.yml"
{
  echo "# Rendered by run-alertmanager.sh at container start; edit the environment, not this file."
  echo "global:"
  echo "  smtp_smarthost: $(quote "${smarthost}")"
  echo "  smtp_from: $(quote "${from}")"
  echo "  smtp_require_tls: ${require_tls}"
  if [ -n "${auth_user}" ]; then
    echo "  smtp_auth_username: $(quote "${auth_user}")"
    echo "  smtp_auth_password: $(quote "${auth_password}")"
  fi
  cat <<'EOF'
route:
  receiver: astrid-oncall
  # One notification per alert and DAG; repeated while it keeps firing.
  group_by: [alertname, dag_id]
  group_wait: 30s
  group_interval: 5m
  repeat_interval: 4h
receivers:
  - name: astrid-oncall
    email_configs:
EOF
  echo "      - to: $(quote "${to}")"
  echo "        send_resolved: true"
  if [ -n "${slack}" ]; then
    printf '%s' "${slack}" >"${dir}/slack_webhook_url"
    cat <<EOF
    slack_configs:
      - api_url_file: $(quote "${dir}/slack_webhook_url")
        send_resolved: true
EOF
    cat <<'EOF'
        title: '[{{ .Status | toUpper }}] {{ .CommonLabels.alertname }}'
        text: '{{ range .Alerts }}{{ .Annotations.summary }} Runbook: {{ .Annotations.runbook_url }}{{ "\n" }}{{ end }}'
EOF
  fi
} >"${config}"

if [ "${1:-}" = "--render-only" ]; then
  echo "${config}"
  exit 0
fi
exec alertmanager --config.file="${config}" "$@"
