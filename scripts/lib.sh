# Sourced by the scripts in this folder: their log line and their waits on
# local ports. A script sets LOG_PREFIX (its own name) before sourcing it.

log() { printf '%s: %s\n' "${LOG_PREFIX:-scripts}" "$*" >&2; }

# Whether something accepts connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port PORT WHAT [TRIES] [PID]: until PORT answers, looking every half
# second, TRIES times (default 120); with PID, it gives up as soon as that
# process has exited rather than waiting out the tries.
wait_port() {
  local port=$1 what=$2 tries=${3:-120} pid=${4:-}
  for _ in $(seq "$tries"); do
    port_open "$port" && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      log "$what exited"
      return 1
    fi
    sleep 0.5
  done
  port_open "$port" && return 0
  log "$what did not open port $port"
  return 1
}
