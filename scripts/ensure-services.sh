#!/usr/bin/env bash
# Start the local PostgreSQL and Redis the integration tests use, if they are down.
set -u
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
if command -v redis-cli >/dev/null && ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" || true
fi
# promtool validates our Prometheus rules/config in tests, and the alert routing test runs the
# prometheus server itself (both from the Debian package "prometheus")
if ! command -v promtool >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "installing promtool (Debian package prometheus)"
  (apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || \
   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1)) || \
   echo "promtool unavailable: its tests will skip"
fi
# Alertmanager: the rules -> Alertmanager -> email test runs Debian's real binary
if ! command -v prometheus-alertmanager >/dev/null && ! command -v alertmanager >/dev/null && \
   command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "installing prometheus-alertmanager (Debian package)"
  (apt-get install -y -qq --no-install-recommends prometheus-alertmanager >/dev/null 2>&1 || \
   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends prometheus-alertmanager >/dev/null 2>&1)) || \
   echo "prometheus-alertmanager unavailable: the alert routing test will skip"
fi
# headless Chromium for the browser test (Debian's package; Playwright drives it, no download)
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "installing chromium (Debian package)"
  (apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1)) || \
   echo "chromium unavailable: the browser test will skip"
fi
exit 0
