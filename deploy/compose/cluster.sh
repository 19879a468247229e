#!/usr/bin/env bash
# The compose test cluster: manager + 3 agent hosts on a private network.
#
#   deploy/compose/cluster.sh up      build the image if missing, start, wait for 3 READY nodes
#   deploy/compose/cluster.sh down    remove the cluster, its volumes, its task containers
#   deploy/compose/cluster.sh addr    the manager's address on the cluster network (IP:7070),
#                                     reachable from this host
#
# Environment: MINKUBE_CLUSTER_PROJECT (compose project, default minkube-cluster),
# MINKUBE_CLUSTER_IMAGE (default minkube-node:local), MINKUBE_CLUSTER_RUN (label
# value, default local), BIN_DIR (binaries for the image, default target/release),
# MINKUBE_CLI (the minkube CLI on this host, default $BIN_DIR/minkube).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
export MINKUBE_CLUSTER_IMAGE=${MINKUBE_CLUSTER_IMAGE:-minkube-node:local}
export MINKUBE_CLUSTER_RUN=${MINKUBE_CLUSTER_RUN:-local}
project=${MINKUBE_CLUSTER_PROJECT:-minkube-cluster}
bin_dir=${BIN_DIR:-$repo/target/release}
cli=${MINKUBE_CLI:-$bin_dir/minkube}
compose=(docker-compose -f "$here/docker-compose.yml" -p "$project")

addr() {
    local id ip
    id=$("${compose[@]}" ps -q manager 2>/dev/null || true)
    [[ -n "$id" ]] || { echo "cluster $project is not running (make cluster-up)" >&2; return 1; }
    ip=$(docker inspect -f "{{with index .NetworkSettings.Networks \"${project}_cluster\"}}{{.IPAddress}}{{end}}" "$id")
    [[ -n "$ip" ]] || { echo "the manager of $project has no address on ${project}_cluster" >&2; return 1; }
    echo "$ip:7070"
}

# Node ids of the cluster, from the manager (task containers carry them).
node_ids() {
    local a
    a=$(addr 2>/dev/null) || return 0
    "$cli" --manager "$a" -o json nodes 2>/dev/null \
        | python3 -c 'import json,sys; [print(n["id"]) for n in json.load(sys.stdin)["nodes"]]' || true
}

case "${1:-}" in
up)
    if ! docker image inspect "$MINKUBE_CLUSTER_IMAGE" >/dev/null 2>&1; then
        "$here/build-image.sh" "$bin_dir" "$MINKUBE_CLUSTER_IMAGE" "minkube.cluster=$MINKUBE_CLUSTER_RUN"
    fi
    "${compose[@]}" up -d --no-build
    a=$(addr)
    echo "waiting for 3 ready nodes at $a"
    for _ in $(seq 1 120); do
        ready=$("$cli" --manager "$a" -o json nodes 2>/dev/null \
            | python3 -c 'import json,sys; print(sum(n["state"] == "ready" for n in json.load(sys.stdin)["nodes"]))' 2>/dev/null || echo 0)
        if [[ "$ready" == 3 ]]; then
            echo "cluster $project up: manager at $a"
            echo "  $cli --manager $a nodes"
            exit 0
        fi
        sleep 0.5
    done
    echo "cluster $project: nodes not ready after 60 s" >&2
    "${compose[@]}" logs --tail 30 >&2 || true
    exit 1
    ;;
down)
    ids=$(node_ids)
    "${compose[@]}" down -v --remove-orphans
    # Task containers belong to the engine, not to the agents: remove the ones
    # this cluster's nodes made.
    for id in $ids; do
        c=$(docker ps -aq --filter "label=minkube.node-id=$id")
        [[ -z "$c" ]] || docker rm -f $c >/dev/null
    done
    echo "cluster $project removed"
    ;;
addr)
    addr
    ;;
*)
    echo "usage: $0 up|down|addr" >&2
    exit 2
    ;;
esac
