#!/usr/bin/env bash
# A whole shardfs cluster on this machine, on loopback.
#
#   deploy/local-cluster.sh up [--chunk M] [--dir DIR]   build, start, check
#   deploy/local-cluster.sh status [--dir DIR]           what runs, with a live probe
#   deploy/local-cluster.sh down [--purge] [--dir DIR]   stop (--purge: delete data too)
#   deploy/local-cluster.sh restart [--dir DIR]          down, then up with the same layout
#
# Layout under DIR (default: .shardfs-cluster in the repository):
#   chunk-<id>/      data of chunk server <id> (listening on 127.0.0.1:720<id>)
#   chunk-<id>.pid   its pid
#   logs/            one log per process
#   cluster.env      `source` it to get the addresses
#
# The metaserver is not built yet (issue 3); until then the cluster is M chunk
# servers, and "up" proves each one works with a real put/get round trip.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$repo/.shardfs-cluster"
chunks=3
purge=0
explicit_count=0
base_port=7200

usage() {
    sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 2
}

cmd="${1:-}"
[ -n "$cmd" ] || usage
shift
while [ $# -gt 0 ]; do
    case "$1" in
        --chunk) chunks="${2:?--chunk needs a number}"; explicit_count=1; shift 2 ;;
        --dir) dir="${2:?--dir needs a directory}"; shift 2 ;;
        --purge) purge=1; shift ;;
        -h|--help) usage ;;
        *) echo "local-cluster.sh: unknown option $1" >&2; usage ;;
    esac
done
case "$chunks" in
    ''|*[!0-9]*) echo "local-cluster.sh: --chunk must be a number from 1 to 99" >&2; exit 2 ;;
esac
if [ "$chunks" -lt 1 ] || [ "$chunks" -gt 99 ]; then
    echo "local-cluster.sh: --chunk must be a number from 1 to 99" >&2; exit 2
fi
case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac
bin="$repo/target/release"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

build() {
    echo "building release binaries (first build takes a few minutes)..."
    (cd "$repo" && cargo build --release --bins --quiet)
}

chunk_ids() {
    # The servers of an existing layout, unless --chunk was given; else 1..M.
    local found=""
    [ -d "$dir" ] && found=$(cd "$dir" && ls -d chunk-* 2>/dev/null | sed -n 's/^chunk-\([0-9]*\)$/\1/p' | sort -n)
    if [ -n "$found" ] && [ "$explicit_count" = 0 ]; then echo "$found"; else seq 1 "$chunks"; fi
}

start_chunk() {
    local id=$1 port=$((base_port + id))
    local pidfile="$dir/chunk-$id.pid"
    if alive "$pidfile"; then
        echo "chunk server $id already running (pid $(cat "$pidfile"))"
        return
    fi
    mkdir -p "$dir/chunk-$id" "$dir/logs"
    nohup "$bin/shardfs-chunk" --listen "127.0.0.1:$port" --data-dir "$dir/chunk-$id" \
        >>"$dir/logs/chunk-$id.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
}

wait_healthy() {
    local id=$1 port=$((base_port + id)) deadline=$((SECONDS + 30))
    until "$bin/shardfs-chunk" probe --addr "127.0.0.1:$port" >/dev/null 2>&1; do
        if ! alive "$dir/chunk-$id.pid"; then
            echo "chunk server $id exited; last log lines:" >&2
            tail -n 20 "$dir/logs/chunk-$id.log" >&2
            exit 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            echo "chunk server $id not healthy after 30 s; see $dir/logs/chunk-$id.log" >&2
            exit 1
        fi
        sleep 0.2
    done
}

write_env() {
    local addrs=() id
    for id in $(chunk_ids); do addrs+=("127.0.0.1:$((base_port + id))"); done
    local joined
    joined=$(IFS=,; echo "${addrs[*]}")
    printf 'export SHARDFS_CHUNK_SERVERS=%s\n' "$joined" >"$dir/cluster.env"
}

status() {
    local id pidfile any=0 down=0
    for id in $(chunk_ids); do
        pidfile="$dir/chunk-$id.pid"
        [ -f "$pidfile" ] || [ -d "$dir/chunk-$id" ] || continue
        any=1
        if alive "$pidfile"; then
            printf 'chunk server %s pid %s: ' "$id" "$(cat "$pidfile")"
            "$bin/shardfs-chunk" probe --addr "127.0.0.1:$((base_port + id))" || down=1
        else
            echo "chunk server $id: not running (data kept in $dir/chunk-$id)"
            down=1
        fi
    done
    if [ $any = 0 ]; then
        echo "no local cluster in $dir; start one with: deploy/local-cluster.sh up"
        return 1
    fi
    return $down
}

stop_all() {
    local pidfile pid
    [ -d "$dir" ] || return 0
    for pidfile in "$dir"/*.pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
            echo "stopped $(basename "$pidfile" .pid) (pid $pid)"
        fi
        rm -f "$pidfile"
    done
}

case "$cmd" in
    up)
        build
        for id in $(chunk_ids); do start_chunk "$id"; done
        for id in $(chunk_ids); do wait_healthy "$id"; done
        write_env
        echo "local cluster up in $dir"
        status
        echo "addresses: source $dir/cluster.env"
        ;;
    status) status ;;
    down)
        stop_all
        if [ $purge = 1 ]; then
            rm -rf "$dir"
            echo "purged $dir"
        fi
        ;;
    restart)
        stop_all
        build
        for id in $(chunk_ids); do start_chunk "$id"; done
        for id in $(chunk_ids); do wait_healthy "$id"; done
        write_env
        status
        ;;
    *) echo "local-cluster.sh: unknown command $cmd" >&2; usage ;;
esac
