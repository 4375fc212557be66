#!/usr/bin/env bash
# What the UI tests (ml_platform_tests/e2e/test_ui.py) need: Debian's Chromium at /usr/bin/chromium
# and the `playwright` Python package in the project venv. Playwright's own browser download is
# not reachable from our machines, so the tests launch Debian's build. Idempotent: each piece is
# installed only when it is missing. Exits non-zero with a message when something can't be had,
# so CI fails instead of the UI tests being skipped.
#
# Usage: .ci/install_ui_deps.sh [VENV]    (VENV defaults to .venv, created by `make install`)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${1:-.venv}"
CHROMIUM=/usr/bin/chromium
PLAYWRIGHT_SPEC="playwright>=1.49,<2"

fail() {
  echo "install_ui_deps: $*" >&2
  echo "install_ui_deps: the UI tests cannot run without it; see ml_platform_tests/e2e/test_ui.py" >&2
  exit 1
}

if [ ! -x "$CHROMIUM" ]; then
  echo "install_ui_deps: $CHROMIUM is missing; installing Debian's chromium package"
  command -v apt-get >/dev/null || fail "no apt-get on this machine to install chromium"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || fail "installing chromium needs root (or sudo)"
    SUDO=sudo
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || fail "apt-get update failed"
  $SUDO apt-get install -y -qq chromium >/dev/null || fail "apt-get install chromium failed"
  [ -x "$CHROMIUM" ] || fail "the chromium package did not provide $CHROMIUM"
fi
"$CHROMIUM" --headless --no-sandbox --version >/dev/null 2>&1 \
  || fail "$CHROMIUM is installed but does not start"

[ -x "$VENV/bin/python" ] || fail "no virtualenv at $VENV (run \`make install\` first)"
if ! "$VENV/bin/python" -c "import playwright.sync_api" 2>/dev/null; then
  echo "install_ui_deps: installing $PLAYWRIGHT_SPEC into $VENV (its browser download is not used)"
  "$VENV/bin/pip" install --quiet "$PLAYWRIGHT_SPEC" || fail "pip install playwright failed"
fi
echo "install_ui_deps: ready ($("$CHROMIUM" --version 2>/dev/null); $("$VENV/bin/python" -m pip show playwright 2>/dev/null | sed -n 's/^Version: /playwright /p'))"
