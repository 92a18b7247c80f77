#!/usr/bin/env bash
# Debian packages some tests drive for real: chromium (the server's browser test, headless),
# nginx with its RTMP module (the livestream tests) and ngircd (an IRC server: the live
# chat tests). `make test` and .ci/run both call
# this, so a newcomer's test run covers what CI's does. Without apt-get, or without the
# rights to use it, it says so and the tests that need these packages skip.
set -uo pipefail
want=()
command -v chromium >/dev/null 2>&1 || want+=(chromium)
{ command -v nginx >/dev/null 2>&1 && [ -e /usr/lib/nginx/modules/ngx_rtmp_module.so ]; } ||
    want+=(nginx-light libnginx-mod-rtmp)
command -v ngircd >/dev/null 2>&1 || [ -x /usr/sbin/ngircd ] || want+=(ngircd)
[ ${#want[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: no apt-get here; install ${want[*]} by hand, or the browser and" \
         "livestream tests will be skipped" >&2
    exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo="sudo -n"
    else
        echo "system-deps: run 'sudo apt-get install ${want[*]}' once, or the browser," \
             "livestream and chat tests will be skipped" >&2
        exit 0
    fi
fi
echo "system-deps: installing ${want[*]} (Debian packages for the browser and livestream tests)" >&2
export DEBIAN_FRONTEND=noninteractive
{ $sudo apt-get install -y -q "${want[@]}" || { $sudo apt-get update -q &&
  $sudo apt-get install -y -q "${want[@]}"; }; } >/dev/null 2>&1 ||
    echo "system-deps: could not install ${want[*]}: the browser and livestream tests" \
         "will be skipped" >&2
exit 0
