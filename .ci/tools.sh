#!/usr/bin/env bash
# The outside checkers the tests run against the node's output, installed when missing:
# promtool (Debian's `prometheus` package: `promtool check metrics`, rule checks; the same
# package's server is the real scraper in the scrape test) and openapi-spec-validator (PyPI).
# .ci/test.sh (the README's test command) calls it first; a test never skips for want of them.
set -euo pipefail

need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]} (apt)"
  sudo_cmd=""
  if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 $sudo_cmd apt-get update -qq
  # The package starts a Prometheus service where an init system runs; the tests start their own.
  timeout 900 $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! command -v openapi-spec-validator >/dev/null 2>&1; then
  echo "== installing openapi-spec-validator (pip)"
  timeout 600 python3 -m pip install -q --user openapi-spec-validator
fi
# pip --user puts scripts here.
user_bin="$(python3 -m site --user-base)/bin"
case ":$PATH:" in *":$user_bin:"*) ;; *) export PATH="$user_bin:$PATH" ;; esac
command -v promtool >/dev/null
command -v openapi-spec-validator >/dev/null
