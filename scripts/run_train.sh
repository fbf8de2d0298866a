#!/usr/bin/env bash
# Train a DVT on one device, or data-parallel on several devices / nodes through MindSpore's msrun.
#
#   bash scripts/run_train.sh CONFIG.yaml [--device_target Ascend|GPU|CPU] [--num_devices N]
#        [--num_nodes M | --worker_num W] [--node_rank R] [--master_addr HOST] [--master_port PORT]
#        [--log_dir DIR] [key=value ...]
#
# --num_devices: workers on this node (default 1). --num_nodes / --worker_num: nodes in the job or
# workers in total (default: this node only). Run the same command on every node with its own
# --node_rank and the first node's --master_addr (rank 0 writes the checkpoints: resuming on
# several nodes needs output_dir on a shared filesystem). key=value overrides any config key
# (python -m dvt_ms.train --list_keys lists them). With more than one worker, msrun writes each
# worker's output to --log_dir/worker_<rank>.log (default msrun_logs/).
# Ctrl-C or SIGTERM stops training after the current step with a checkpoint (a second one aborts);
# continue with the same command and resume=auto. Exit code 130 (SIGINT) / 143 (SIGTERM).
set -euo pipefail
source "$(dirname "$0")/_env.sh"

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit "${1:-2}"; }

config=""
num_devices=1
num_nodes=1
worker_num=""
node_rank=""
master_addr="127.0.0.1"
master_port=8118
log_dir="msrun_logs"
overrides=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage 0 ;;
    --device_target|--num_devices|--num_nodes|--worker_num|--node_rank|--master_addr|--master_port|--log_dir)
      [ $# -ge 2 ] || { echo "run_train.sh: $1 needs a value" >&2; exit 2; }
      name="${1#--}"; value="$2"; shift 2 ;;
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
    *) echo "run_train.sh: unknown option --$name" >&2; usage ;;
  esac
done
[ -n "$config" ] || { echo "run_train.sh: no config given" >&2; usage; }
[ -f "$config" ] || { echo "run_train.sh: config $config not found" >&2; exit 2; }
for number in "$num_devices" "$num_nodes" ${worker_num:+"$worker_num"}; do
  [[ "$number" =~ ^[1-9][0-9]*$ ]] || { echo "run_train.sh: device/node counts must be positive integers, got $number" >&2; exit 2; }
done
worker_num="${worker_num:-$((num_devices * num_nodes))}"

if [ "$worker_num" -eq 1 ]; then
  DVT_PROG="$0" exec python -m dvt_ms.train "$config" ${overrides[@]+"${overrides[@]}"}
fi

msrun_args=(--worker_num="$worker_num" --local_worker_num="$num_devices" --master_addr="$master_addr"
            --master_port="$master_port" --log_dir="$log_dir" --join=True)
[ -z "$node_rank" ] || msrun_args+=(--node_rank="$node_rank")
echo "[dvt-ms] msrun: $worker_num workers ($num_devices on this node), logs in $log_dir/" >&2
# msrun answers Ctrl-C by killing its workers at once. It runs in a session of its own, out of
# the terminal's reach; a SIGINT/SIGTERM to this script goes to the workers as SIGTERM instead:
# they agree on a step, rank 0 saves a checkpoint and they all end (with 0, so msrun waits for
# rank 0 to finish saving).
setsid msrun "${msrun_args[@]}" python -m dvt_ms.train "$config" ${overrides[@]+"${overrides[@]}"} &
msrun_pid=$!
stopped_by=""
stop_workers() {   # the workers stop gracefully on the first SIGTERM and at once on the second
  if [ -z "$stopped_by" ]; then
    stopped_by="$1"
    echo "[dvt-ms] SIG$1: the workers stop after their current step and save a checkpoint (again to abort)" >&2
  else
    echo "[dvt-ms] SIG$1 again: aborting" >&2
  fi
  for pid in $(pgrep -P "$msrun_pid"); do
    if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx 'MS_ROLE=MS_WORKER'; then
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
}
trap 'stop_workers INT' INT
trap 'stop_workers TERM' TERM
status=0
while kill -0 "$msrun_pid" 2>/dev/null; do
  wait "$msrun_pid" && status=0 || status=$?   # returns early when a signal arrives
done
case "$stopped_by" in
  INT) exit 130 ;;
  TERM) exit 143 ;;
esac
exit "$status"
