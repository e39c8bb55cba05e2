#!/usr/bin/env bash
# Debian packages the tests use: chromium + chromium-driver (browser tests) and docker-compose (schema check of
# docker-compose.yaml; there is no Docker engine). Installed when we can (root and apt); otherwise one line says how.
# `make test` and .ci/run both call this, so a newcomer's `make test` skips nothing that CI runs.
set -uo pipefail
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v docker-compose >/dev/null || missing+=(docker-compose)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "system packages: installing ${missing[*]} ..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null && exit 0
  echo "system packages: apt-get could not install ${missing[*]}" >&2
  exit 1
fi
echo "system packages: missing ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}" >&2
[ "${CI:-}" = "true" ] && exit 1
exit 0
