#!/usr/bin/env bash
# A walk through minkube on this machine: one manager, one agent, a few tasks
# run through the CLI. Everything it starts is stopped and everything it
# creates is removed on exit (processes by pid, containers and the image by
# a label unique to this run).
#
#   bash scripts/demo.sh        (or: make demo)
#
# Needs Docker and /bin/busybox (apt-get install busybox-static).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

cargo=${CARGO:-cargo}
bin_dir=${CARGO_TARGET_DIR:-$root/target}/debug
run_id="$(date +%Y%m%d%H%M%S)-$$"
image=minkube-demo:busybox
image_label="minkube.demo=$run_id"
# User labels may not start with "minkube.", hence the dash.
task_label="minkube-demo=$run_id"
work=$root/.demo/$run_id
# Bounded waits, in seconds.
start_timeout=${DEMO_START_TIMEOUT:-30}
task_timeout=${DEMO_TASK_TIMEOUT:-60}

manager_pid=""
agent_pid=""
image_built=false
addr=""

section() {
    printf '\n==== %s ====\n' "$*"
}

note() {
    printf '  -> %s\n' "$*"
}

die() {
    echo "demo: error: $*" >&2
    exit 1
}

# Stops one process we started: SIGTERM, then SIGKILL if it lingers.
stop_process() {
    local name=$1 pid=$2
    [[ -n $pid ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    note "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        note "$name did not stop within 10s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    section "cleanup"
    stop_process "agent" "$agent_pid"
    stop_process "manager" "$manager_pid"
    # Containers of this run carry the task label (copied from the spec) and
    # the image label (inherited from the image).
    local ids
    ids=$( {
        docker ps -aq --filter "label=$task_label"
        docker ps -aq --filter "label=$image_label"
    } 2>/dev/null | sort -u)
    if [[ -n $ids ]]; then
        note "removing containers: $(echo "$ids" | tr '\n' ' ')"
        # shellcheck disable=SC2086 # one id per word
        docker rm -f $ids >/dev/null
    fi
    if $image_built; then
        # Remove the tag only while it still points at this run's image.
        local owner
        owner=$(docker image inspect --format '{{ index .Config.Labels "minkube.demo" }}' "$image" 2>/dev/null)
        if [[ $owner == "$run_id" ]]; then
            note "removing image $image"
            docker rmi "$image" >/dev/null
        fi
    fi
    if [[ $rc -eq 0 ]]; then
        rm -rf "$work"
        rmdir "$root/.demo" 2>/dev/null
        echo "demo finished"
    else
        echo "demo failed (exit $rc); logs kept in $work" >&2
        for log in "$work"/manager.log "$work"/agent.log; do
            [[ -f $log ]] || continue
            echo "--- last lines of $log ---" >&2
            tail -n 30 "$log" >&2
        done
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mk() {
    "$bin_dir/minkube" --manager "$addr" "$@"
}

# The "Key: value" field of `minkube get ID` (table mode).
task_field() {
    local id=$1 key=$2 out
    out=$(mk get "$id") || return 1
    sed -n "s/^$key: *//p" <<<"$out" | head -n 1
}

# Waits until task ID is in one of the given states; fails on timeout.
wait_state() {
    local id=$1
    shift
    local want=" $* " state=""
    local deadline=$((SECONDS + task_timeout))
    while ((SECONDS < deadline)); do
        state=$(task_field "$id" "State") || state=""
        if [[ $want == *" $state "* ]]; then
            note "task $id is $state"
            return 0
        fi
        sleep 0.5
    done
    mk get "$id" >&2 || true
    die "task $id did not reach $* within ${task_timeout}s (last state: ${state:-unknown})"
}

# run_task NAME [FLAGS] [-- CMD...]: the shared flags go first, since
# everything after `--` belongs to the command.
run_task() {
    mk run --image "$image" --pull-policy never --label "$task_label" "$@"
}

# ------------------------------------------------------------------ build
section "build"
command -v docker >/dev/null 2>&1 || die "docker CLI not found"
docker info >/dev/null 2>&1 || die "cannot talk to Docker: is the daemon running (docker info)?"
"$cargo" build --workspace --bins
for b in minkube minkube-manager minkube-agent; do
    [[ -x $bin_dir/$b ]] || die "$bin_dir/$b is missing after the build"
done

section "image"
bash scripts/test-image.sh "$image" "$image_label" >/dev/null
image_built=true
note "built $image (label $image_label)"

# ------------------------------------------------------------------ cluster
section "manager"
mkdir -p "$work"
# A secured cluster: CA, server certificate, admin token and join token.
"$bin_dir/minkube-manager" init --data-dir "$work/manager" >"$work/init.out" \
    || die "minkube-manager init failed"
admin_token=$(sed -n '/^admin token/{n;s/^ *//;p;}' "$work/init.out")
join_token=$(sed -n '/^join token/{n;s/^ *//;p;}' "$work/init.out")
[[ -n $admin_token && -n $join_token ]] || die "minkube-manager init printed no tokens"
export MINKUBE_CA_CERT="$work/manager/pki/ca.pem" MINKUBE_TOKEN="$admin_token"
note "cluster CA in $MINKUBE_CA_CERT; the CLI uses the admin token (MINKUBE_TOKEN)"
"$bin_dir/minkube-manager" --port 0 --admin-port 0 --data-dir "$work/manager" \
    >"$work/manager.out" 2>"$work/manager.log" &
manager_pid=$!
deadline=$((SECONDS + start_timeout))
while ((SECONDS < deadline)); do
    addr=$(sed -n 's/^minkube-manager listening on //p' "$work/manager.out" | head -n 1)
    [[ -z $addr ]] || break
    kill -0 "$manager_pid" 2>/dev/null || die "minkube-manager exited during start-up"
    sleep 0.2
done
[[ -n $addr ]] || die "minkube-manager did not report its address within ${start_timeout}s"
note "minkube-manager (pid $manager_pid) listening on $addr"

section "agent"
# First start: joins with the join token and keeps its node certificate.
"$bin_dir/minkube-agent" --admin-port 0 --name demo-node --data-dir "$work/agent" --manager "$addr" \
    --ca-cert "$MINKUBE_CA_CERT" --join-token "$join_token" \
    >"$work/agent.out" 2>"$work/agent.log" &
agent_pid=$!
deadline=$((SECONDS + start_timeout))
ready=false
while ((SECONDS < deadline)); do
    kill -0 "$agent_pid" 2>/dev/null || die "minkube-agent exited during start-up"
    nodes=$(mk nodes -o json 2>/dev/null) || nodes=""
    if grep -Eq '"state": *"ready"' <<<"$nodes"; then
        ready=true
        break
    fi
    sleep 0.5
done
$ready || die "node demo-node was not ready within ${start_timeout}s"
note "minkube-agent (pid $agent_pid) joined over TLS and registered demo-node"
mk nodes
mk whoami
note "a token may only do what its role allows:"
viewer_token=$(mk token create demo-viewer --role viewer)
if MINKUBE_TOKEN="$viewer_token" mk run denied --image "$image" -- true 2>"$work/denied.err"; then
    die "a viewer token could run a task"
fi
sed 's/^/  /' "$work/denied.err"

# ------------------------------------------------------------------ tasks
section "a task that prints and exits 0"
echo '$ minkube run hello --image '"$image"' -- echo "hello from minkube"'
hello=$(run_task hello -- echo "hello from minkube")
note "task id $hello"
wait_state "$hello" completed

section "a task that exits 3"
echo "\$ minkube run exit-three --image $image -- sh -c 'echo failing on purpose; exit 3'"
failing=$(run_task exit-three -- sh -c 'echo failing on purpose; exit 3')
note "task id $failing"
wait_state "$failing" failed
note "exit code: $(task_field "$failing" "Exit code"), reason: $(task_field "$failing" "Reason")"

section "a long-running task"
echo "\$ minkube run sleeper --image $image -- sleep 300"
sleeper=$(run_task sleeper -- sleep 300)
note "task id $sleeper"
wait_state "$sleeper" running

section "a web server with a published port"
echo "\$ minkube run web --image $image --port 8080 -- sh -c '... httpd -f -p 8080 -h /www'"
web=$(run_task web --port 8080 -- sh -c \
    'echo "hello from minkube httpd" > /www/index.html && exec httpd -f -p 8080 -h /www')
note "task id $web"
wait_state "$web" running
host_port=""
deadline=$((SECONDS + task_timeout))
while ((SECONDS < deadline)); do
    # "0.0.0.0:49153->8080/tcp" -> 49153
    ports=$(task_field "$web" "Host ports") || ports=""
    # The IPv4 binding (Docker may give the IPv6 twin another port).
    host_port=$(tr ',' '\n' <<<"$ports" | sed -n 's/^ *[0-9.]*:\([0-9][0-9]*\)->8080\/tcp.*/\1/p' | head -n1)
    [[ -z $host_port ]] || break
    sleep 0.5
done
[[ -n $host_port ]] || die "task $web reported no host port for 8080 within ${task_timeout}s"
note "container port 8080 is published on host port $host_port"
url="http://127.0.0.1:$host_port/"
body=""
deadline=$((SECONDS + 15))
while ((SECONDS < deadline)); do
    if command -v curl >/dev/null 2>&1; then
        body=$(curl -fsS --max-time 2 "$url" 2>/dev/null) || body=""
    else
        body=$(busybox wget -q -T 2 -O - "$url" 2>/dev/null) || body=""
    fi
    [[ -z $body ]] || break
    sleep 0.5
done
[[ -n $body ]] || die "no answer from $url within 15s"
note "GET $url -> $(printf '%s\n' "$body" | head -n 1)"

# ------------------------------------------------------------------ inspect
section "minkube ps"
mk ps

section "minkube nodes"
mk nodes

section "minkube get $failing"
mk get "$failing"

section "minkube logs (the container has exited; its output is still readable)"
echo "\$ minkube logs $failing"
mk logs "$failing"
echo "\$ minkube logs $hello"
mk logs "$hello"

section "minkube get $web"
mk get "$web"

section "stop the long-running task"
echo "\$ minkube stop $sleeper"
mk stop "$sleeper"
wait_state "$sleeper" completed
note "reason: $(task_field "$sleeper" "Reason")"

section "minkube ps"
mk ps
