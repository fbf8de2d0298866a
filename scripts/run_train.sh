#!/usr/bin/env bash
# Train a DVT on one device, or data-parallel on several devices / nodes through MindSpore's msrun.
#
#   bash scripts/run_train.sh CONFIG.yaml [--device_target Ascend|GPU|CPU] [--num_devices N]
#        [--num_nodes M | --worker_num W] [--node_rank R] [--master_addr HOST] [--master_port PORT]
#        [--bind_core[=True|DICT]] [--log_dir DIR] [key=value ...]
#
# --num_devices: workers on this node (default 1). --num_nodes / --worker_num: nodes in the job or
# workers in total (default: this node only). On several nodes run the same command on every node
# with its own --node_rank (0 .. M-1) and the first node's --master_addr (both required; rank 0
# writes the checkpoints and the image check: output_dir must be on a shared filesystem).
# --bind_core: msrun pins each worker to CPU cores (helps on multi-NUMA hosts; see docs/devices.md).
# key=value overrides any config key (python -m dvt_ms.train --list_keys lists them). With more than
# one worker, msrun writes each worker's output to --log_dir/worker_<rank>.log (default msrun_logs/)
# and its own to msrun.log; when a worker fails, all are stopped and its first error is printed.
# Ctrl-C or SIGTERM stops training after the current step with a checkpoint (a second one aborts);
# continue with the same command and resume=auto. Exit code 130 (SIGINT) / 143 (SIGTERM).
set -euo pipefail
source "$(dirname "$0")/_env.sh"

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit "${1:-2}"; }

config=""
num_devices=1
num_nodes=1
worker_num=""
node_rank=""
master_addr=""
bind_core=""
master_port=8118
log_dir="msrun_logs"
overrides=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage 0 ;;
    --device_target|--num_devices|--num_nodes|--worker_num|--node_rank|--master_addr|--master_port|--log_dir)
      [ $# -ge 2 ] || { echo "run_train.sh: $1 needs a value" >&2; exit 2; }
      name="${1#--}"; value="$2"; shift 2 ;;
    --bind_core) name=bind_core; value=True; shift ;;
    --*=*)
      name="${1%%=*}"; name="${name#--}"; value="${1#*=}"; shift ;;
    --*) echo "run_train.sh: unknown option $1" >&2; usage ;;
    *=*) overrides+=("$1"); shift; continue ;;
    *)
      [ -z "$config" ] || { echo "run_train.sh: more than one config given ($config, $1)" >&2; exit 2; }
      config="$1"; shift; continue ;;
  esac
  case "$name" in
    device_target) overrides+=("device_target=$value") ;;
    num_devices) num_devices="$value" ;;
    num_nodes) num_nodes="$value" ;;
    worker_num) worker_num="$value" ;;
    node_rank) node_rank="$value" ;;
    master_addr) master_addr="$value" ;;
    master_port) master_port="$value" ;;
    log_dir) log_dir="$value" ;;
    bind_core) bind_core="$value" ;;
    *) echo "run_train.sh: unknown option --$name" >&2; usage ;;
  esac
done
[ -n "$config" ] || { echo "run_train.sh: no config given" >&2; usage; }
[ -f "$config" ] || { echo "run_train.sh: config $config not found" >&2; exit 2; }
for number in "$num_devices" "$num_nodes" ${worker_num:+"$worker_num"}; do
  [[ "$number" =~ ^[1-9][0-9]*$ ]] || { echo "run_train.sh: device/node counts must be positive integers, got $number" >&2; exit 2; }
done
worker_num="${worker_num:-$((num_devices * num_nodes))}"
if [ "$worker_num" -gt "$num_devices" ]; then
  # Without them every node would start its own scheduler on 127.0.0.1 and wait for the others
  # until msrun's cluster timeout.
  nodes=$(( (worker_num + num_devices - 1) / num_devices ))
  if [ -z "$master_addr" ] || [ -z "$node_rank" ]; then
    echo "run_train.sh: $worker_num workers on $nodes nodes need --master_addr (the first node's address) and --node_rank (0..$((nodes - 1)), this node's)" >&2
    exit 2
  fi
  [[ "$node_rank" =~ ^[0-9]+$ ]] && [ "$node_rank" -lt "$nodes" ] || {
    echo "run_train.sh: --node_rank must be 0..$((nodes - 1)) for $nodes nodes, got $node_rank" >&2; exit 2; }
fi
master_addr="${master_addr:-127.0.0.1}"

if [ "$worker_num" -eq 1 ]; then
  DVT_PROG="$0" exec python -m dvt_ms.train "$config" ${overrides[@]+"${overrides[@]}"}
fi

msrun_args=(--worker_num="$worker_num" --local_worker_num="$num_devices" --master_addr="$master_addr"
            --master_port="$master_port" --log_dir="$log_dir" --join=True)
[ -z "$node_rank" ] || msrun_args+=(--node_rank="$node_rank")
[ -z "$bind_core" ] || msrun_args+=(--bind_core="$bind_core")
mkdir -p "$log_dir"
msrun_log="$log_dir/msrun.log"
: > "$msrun_log"
echo "[dvt-ms] msrun: $worker_num workers ($num_devices on this node), logs in $log_dir/ (worker_<rank>.log, msrun.log)" >&2
# msrun answers Ctrl-C by killing its workers at once. It runs in a session of its own, out of
# the terminal's reach; a SIGINT/SIGTERM to this script goes to the workers as SIGTERM instead:
# they agree on a step, rank 0 saves a checkpoint and they all end (with 0, so msrun waits for
# rank 0 to finish saving). Its own output goes to msrun.log.
setsid msrun "${msrun_args[@]}" python -m dvt_ms.train "$config" ${overrides[@]+"${overrides[@]}"} \
  > "$msrun_log" 2>&1 < /dev/null &
msrun_pid=$!

msrun_children() { pgrep -P "$msrun_pid" || true; }
workers() {   # msrun's live worker processes on this node
  local pid
  for pid in $(msrun_children); do
    if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx 'MS_ROLE=MS_WORKER'; then echo "$pid"; fi
  done
}
kill_msrun() {   # msrun, its scheduler and workers (each in a process group of its own), at once
  local pid group
  for pid in $(msrun_children); do
    group="$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')"
    if [ -n "$group" ] && [ "$group" != "$(ps -o pgid= -p $$ | tr -d ' ')" ]; then
      kill -KILL -- "-$group" 2>/dev/null || true
    fi
    kill -KILL "$pid" 2>/dev/null || true
  done
  kill -KILL -- "-$msrun_pid" 2>/dev/null || true
  { wait "$msrun_pid"; } 2>/dev/null || true   # (no "Killed" job notice)
}
first_worker_error() {   # the first error line of the workers' logs, in rank order: ours, then Python's, then MindSpore's
  local logs=() pattern line
  mapfile -t logs < <(ls "$log_dir"/worker_*.log 2>/dev/null | sort -V)
  [ ${#logs[@]} -gt 0 ] || return 0
  for pattern in '^error: ' '^[A-Za-z_][A-Za-z0-9_.]*(Error|Exception|Interrupt)(: |$)' '^\[(ERROR|CRITICAL)\]'; do
    for log in "${logs[@]}"; do
      line="$(grep -m1 -E "$pattern" "$log" 2>/dev/null || true)"
      if [ -n "$line" ]; then echo "$line [$(basename "$log")]"; return 0; fi
    done
  done
}
stopped_by=""
stop_workers() {   # the workers stop gracefully on the first SIGTERM and at once on the second
  local pids
  pids="$(workers)"
  if [ -n "$stopped_by" ] || [ -z "$pids" ]; then
    echo "[dvt-ms] SIG$1${stopped_by:+ again}: aborting" >&2
    stopped_by="${stopped_by:-$1}"
    kill_msrun
    return
  fi
  stopped_by="$1"
  echo "[dvt-ms] SIG$1: the workers stop after their current step and save a checkpoint (again to abort)" >&2
  kill -TERM $pids 2>/dev/null || true
}
trap 'stop_workers INT' INT
trap 'stop_workers TERM' TERM
status=0
while kill -0 "$msrun_pid" 2>/dev/null; do
  # msrun stops the other workers when one exits non-zero, then waits for its scheduler, which
  # waits up to its cluster timeout (minutes) for the dead workers: end it here instead.
  if grep -q "exit with exception" "$msrun_log" 2>/dev/null; then
    kill_msrun
    error="$(first_worker_error)"
    echo "${error:-run_train.sh: a worker failed (no error line in $log_dir/worker_*.log)} (all logs in $log_dir/)" >&2
    exit 1
  fi
  sleep 0.5 &
  wait $! 2>/dev/null || true   # returns early when a signal arrives
done
wait "$msrun_pid" && status=0 || status=$?
if [ "$status" -ne 0 ] && [ -z "$stopped_by" ]; then
  error="$(first_worker_error)"
  [ -z "$error" ] || echo "$error (all logs in $log_dir/)" >&2
fi
case "$stopped_by" in
  INT) exit 130 ;;
  TERM) exit 143 ;;
esac
exit "$status"
