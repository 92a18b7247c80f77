# Sourced by scripts/*_reproduce.sh: with BUSY=1, `busy_start` starts a process that keeps
# one core busy (a user's machine is rarely idle) until `busy_stop` or the script's exit.
busy=""
busy_start() {
  if [ "${BUSY:-0}" = 1 ]; then
    python3 -c 'while True: pass' &
    busy=$!
    trap busy_stop EXIT
  fi
}
busy_stop() {
  if [ -n "$busy" ]; then kill "$busy" 2>/dev/null || true; busy=""; fi
}
