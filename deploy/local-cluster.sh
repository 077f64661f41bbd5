#!/usr/bin/env bash
# A whole shardfs cluster on this machine, on loopback.
#
#   deploy/local-cluster.sh up [--meta N] [--chunk M] [--dir DIR] [--insecure] [--encrypt-at-rest]
#                                                       build, start, check
#   deploy/local-cluster.sh status [--dir DIR]           what runs, with a live probe
#   deploy/local-cluster.sh down [--purge] [--dir DIR]   stop (--purge: delete data too)
#   deploy/local-cluster.sh restart [--dir DIR]          down, then up with the same layout
#
# Layout under DIR (default: .shardfs-cluster in the repository):
#   meta-<id>/       data of metaserver <id> (listening on 127.0.0.1:71<id>, e.g. 7101)
#   chunk-<id>/      data of chunk server <id> (listening on 127.0.0.1:72<id>, zone zone-<id>)
#   meta-<id>.pid, chunk-<id>.pid
#   logs/            one log per process
#   tls/             the cluster CA (ca.pem, ca.key) and each server's
#                    certificate and key (meta-<id>.pem/.key, chunk-<id>.pem/.key)
#   tls/admin.token  the bootstrap admin token (0600) every metaserver accepts
#   cluster.env      `source` it: export SHARDFS_META=127.0.0.1:7101,...,
#                    SHARDFS_CA=DIR/tls/ca.pem and SHARDFS_TOKEN (the admin token)
#
# The cluster runs TLS by default (mutual TLS between servers, certificates
# from its own CA, made on the first "up"). --insecure starts it in
# plaintext instead (remembered in DIR/insecure; cluster.env then sets
# SHARDFS_INSECURE=1): for benchmarks only. --encrypt-at-rest (on the first
# "up", remembered in DIR/encrypt-at-rest) encrypts every chunk server's
# chunk files under its own key file, DIR/keys/chunk-<id>.key (0600).
#
# Defaults: 3 metaservers, 3 chunk servers. "up" and "restart" wait until the
# metaservers have a leader and every chunk server is registered and alive,
# prove each chunk server with a chunk put/get, and say "healthy" only once a
# put and a get through the shardfs CLI succeed (retried for up to 60 s);
# "up" then puts a 20 MiB file, gets it back and compares the hashes.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$repo/.shardfs-cluster"
chunks=3
metas=3
purge=0
insecure=0
encrypt=0
explicit_count=0
explicit_meta=0
base_port=7200
meta_base_port=7100

usage() {
    sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 2
}

cmd="${1:-}"
[ -n "$cmd" ] || usage
shift
while [ $# -gt 0 ]; do
    case "$1" in
        --chunk) chunks="${2:?--chunk needs a number}"; explicit_count=1; shift 2 ;;
        --meta) metas="${2:?--meta needs a number}"; explicit_meta=1; shift 2 ;;
        --dir) dir="${2:?--dir needs a directory}"; shift 2 ;;
        --purge) purge=1; shift ;;
        --insecure) insecure=1; shift ;;
        --encrypt-at-rest) encrypt=1; shift ;;
        -h|--help) usage ;;
        *) echo "local-cluster.sh: unknown option $1" >&2; usage ;;
    esac
done
for pair in "chunk:$chunks" "meta:$metas"; do
    n=${pair#*:}
    case "$n" in
        ''|*[!0-9]*) echo "local-cluster.sh: --${pair%%:*} must be a number from 1 to 99" >&2; exit 2 ;;
    esac
    if [ "$n" -lt 1 ] || [ "$n" -gt 99 ]; then
        echo "local-cluster.sh: --${pair%%:*} must be a number from 1 to 99" >&2; exit 2
    fi
done
case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac
# SHARDFS_BIN_DIR: use the binaries already built there (no build), as
# deploy/tour-test.sh does with the ones the tests built.
bin="${SHARDFS_BIN_DIR:-$repo/target/release}"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

tls="$dir/tls"

setup_tls() {
    # The mode is chosen on the first "up" and kept: a TLS cluster's
    # members would refuse a plaintext one's.
    [ "${1:-}" = existing ] || mkdir -p "$dir"
    if [ "$encrypt" = 1 ] && [ ! -f "$dir/encrypt-at-rest" ]; then
        if compgen -G "$dir/chunk-*/chunks/*" >/dev/null; then
            echo "local-cluster.sh: $dir already holds unencrypted chunks; purge it first to encrypt at rest" >&2
            exit 2
        fi
        touch "$dir/encrypt-at-rest"
    fi
    if [ "$insecure" = 1 ] && [ ! -f "$dir/insecure" ]; then
        if [ -f "$tls/ca.pem" ]; then
            echo "local-cluster.sh: $dir is a TLS cluster; purge it first to make an insecure one" >&2
            exit 2
        fi
        touch "$dir/insecure"
    fi
    if [ -f "$dir/insecure" ]; then
        insecure=1
        export SHARDFS_INSECURE=1
        unset SHARDFS_CA
        return
    fi
    [ "${1:-}" = existing ] && [ ! -f "$tls/ca.pem" ] && return
    [ -f "$tls/ca.pem" ] || "$bin/shardfs" cluster init-ca --dir "$tls" >/dev/null
    [ -f "$tls/admin.token" ] || "$bin/shardfs" admin token bootstrap --out "$tls/admin.token" >/dev/null
    export SHARDFS_CA="$tls/ca.pem"
    SHARDFS_TOKEN="$(head -n 1 "$tls/admin.token")"
    export SHARDFS_TOKEN
    unset SHARDFS_INSECURE
}

# The flags that give server KIND ID its certificate (or --insecure).
tls_flags() {
    local kind=$1 id=$2
    if [ "$insecure" = 1 ]; then
        echo "--insecure"
        return
    fi
    [ -f "$tls/$kind-$id.pem" ] || "$bin/shardfs" cluster issue-cert --ca-dir "$tls" "--$kind" "$id" >/dev/null
    echo "--tls-cert $tls/$kind-$id.pem --tls-key $tls/$kind-$id.key --tls-ca $tls/ca.pem"
    if [ "$kind" = meta ]; then echo "--admin-token-file $tls/admin.token"; fi
}

# The flags that encrypt chunk server $1's files at rest (none unless the
# cluster was made with --encrypt-at-rest), making its key on first use.
at_rest_flags() {
    local id=$1 key="$dir/keys/chunk-$1.key"
    [ -f "$dir/encrypt-at-rest" ] || return 0
    if [ ! -f "$key" ]; then
        mkdir -p "$dir/keys"
        chmod 700 "$dir/keys"
        "$bin/shardfs-chunk" keygen --out "$key" >/dev/null
    fi
    echo "--encryption-key-file $key"
}

# How the probe of chunk server $1 talks to it: as that server (its own
# certificate), so that it may put and read back a chunk without a
# capability.
probe_flags() {
    local id=$1
    if [ "$insecure" = 1 ]; then
        echo "--insecure"
    else
        echo "--ca $tls/ca.pem --cert $tls/chunk-$id.pem --key $tls/chunk-$id.key"
    fi
}

build() {
    if [ -n "${SHARDFS_BIN_DIR:-}" ]; then
        for b in shardfs shardfs-meta shardfs-chunk; do
            [ -x "$bin/$b" ] || { echo "local-cluster.sh: $bin/$b is missing (SHARDFS_BIN_DIR)" >&2; exit 1; }
        done
        return
    fi
    echo "building release binaries (the first build takes about 6 minutes on 2 cores)..."
    (cd "$repo" && cargo build --release --bins --quiet)
}

chunk_ids() {
    # The servers of an existing layout, unless --chunk was given; else 1..M.
    local found=""
    [ -d "$dir" ] && found=$(cd "$dir" && ls -d chunk-* 2>/dev/null | sed -n 's/^chunk-\([0-9]*\)$/\1/p' | sort -n)
    if [ -n "$found" ] && [ "$explicit_count" = 0 ]; then echo "$found"; else seq 1 "$chunks"; fi
}

meta_ids() {
    local found=""
    [ -d "$dir" ] && found=$(cd "$dir" && ls -d meta-* 2>/dev/null | sed -n 's/^meta-\([0-9]*\)$/\1/p' | sort -n)
    if [ -n "$found" ] && [ "$explicit_meta" = 0 ]; then echo "$found"; else seq 1 "$metas"; fi
}

meta_list() {
    local id addrs=()
    for id in $META_IDS; do addrs+=("127.0.0.1:$((meta_base_port + id))"); done
    (IFS=,; echo "${addrs[*]}")
}

start_meta() {
    local id=$1 port=$((meta_base_port + id)) peers="" other
    local pidfile="$dir/meta-$id.pid"
    if alive "$pidfile"; then
        echo "metaserver $id already running (pid $(cat "$pidfile"))"
        return
    fi
    for other in $META_IDS; do peers="$peers${peers:+,}$other=127.0.0.1:$((meta_base_port + other))"; done
    mkdir -p "$dir/meta-$id" "$dir/logs"
    # shellcheck disable=SC2046 # the flags are words without spaces
    nohup "$bin/shardfs-meta" --id "$id" --listen "127.0.0.1:$port" --peers "$peers" \
        --data-dir "$dir/meta-$id" $(tls_flags meta "$id") >>"$dir/logs/meta-$id.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
}

wait_cluster() {
    local deadline=$((SECONDS + 60)) want
    want=$(echo $CHUNK_IDS | wc -w)
    until [ "$("$bin/shardfs-meta" status --meta "$(meta_list)" --json 2>/dev/null | grep -c '"alive": true')" = "$want" ]; do
        if [ $SECONDS -ge $deadline ]; then
            echo "cluster not healthy after 60 s; logs in $dir/logs" >&2
            "$bin/shardfs-meta" status --meta "$(meta_list)" >&2 || true
            exit 1
        fi
        sleep 0.3
    done
}

start_chunk() {
    local id=$1 port=$((base_port + id))
    local pidfile="$dir/chunk-$id.pid"
    if alive "$pidfile"; then
        echo "chunk server $id already running (pid $(cat "$pidfile"))"
        return
    fi
    mkdir -p "$dir/chunk-$id" "$dir/logs"
    # shellcheck disable=SC2046 # the flags are words without spaces
    nohup "$bin/shardfs-chunk" --listen "127.0.0.1:$port" --data-dir "$dir/chunk-$id" \
        --id "$id" --zone "zone-$id" --meta "$(meta_list)" $(tls_flags chunk "$id") $(at_rest_flags "$id") \
        >>"$dir/logs/chunk-$id.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
}

wait_healthy() {
    local id=$1 port=$((base_port + id)) deadline=$((SECONDS + 30))
    # shellcheck disable=SC2046 # the flags are words without spaces
    until "$bin/shardfs-chunk" probe --addr "127.0.0.1:$port" $(probe_flags "$id") >/dev/null 2>&1; do
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

wait_serving() {
    # Healthy means serving: a put and a get through the CLI, compared.
    local deadline=$((SECONDS + 60)) meta probe="$dir/demo/probe.bin" back="$dir/demo/probe.back"
    local err="$dir/logs/health-probe.err" started=$SECONDS
    meta="$(meta_list)"
    mkdir -p "$dir/demo"
    head -c 4096 /dev/urandom >"$probe"
    rm -f "$back"
    until "$bin/shardfs" --meta "$meta" put "$probe" /.local-cluster/probe >/dev/null 2>"$err" \
        && "$bin/shardfs" --meta "$meta" get /.local-cluster/probe "$back" >/dev/null 2>>"$err" \
        && cmp -s "$probe" "$back"; do
        if [ $SECONDS -ge $deadline ]; then
            echo "cluster not serving after 60 s (a put and a get kept failing): $(tail -n 1 "$err")" >&2
            echo "logs in $dir/logs" >&2
            exit 1
        fi
        rm -f "$back"
        sleep 0.5
    done
    rm -f "$back"
    echo "healthy: a put and a get succeeded ($((SECONDS - started)) s after the servers were up)"
}

round_trip() {
    # A real put and get through the shardfs CLI, compared by hash.
    local demo="$dir/demo" meta
    meta="$(meta_list)"
    mkdir -p "$demo"
    head -c $((20 * 1024 * 1024 + 12345)) /dev/urandom >"$demo/sample.bin"
    rm -f "$demo/sample.back"
    "$bin/shardfs" --meta "$meta" put "$demo/sample.bin" /demo/sample.bin
    "$bin/shardfs" --meta "$meta" get /demo/sample.bin "$demo/sample.back"
    local want got
    want=$(sha256sum <"$demo/sample.bin" | cut -d' ' -f1)
    got=$(sha256sum <"$demo/sample.back" | cut -d' ' -f1)
    if [ "$want" != "$got" ]; then
        echo "round trip FAILED: put $want, got back $got" >&2
        exit 1
    fi
    echo "round trip ok: /demo/sample.bin, $(stat -c %s "$demo/sample.bin") bytes, sha256 $want"
    "$bin/shardfs" --meta "$meta" stat /demo/sample.bin | sed -n '1,7p'
}

write_env() {
    {
        printf 'export SHARDFS_META=%s\n' "$(meta_list)"
        if [ "$insecure" = 1 ]; then
            printf 'export SHARDFS_INSECURE=1\nunset SHARDFS_CA SHARDFS_TOKEN\n'
        else
            printf 'export SHARDFS_CA=%s\nunset SHARDFS_INSECURE\n' "$tls/ca.pem"
            printf 'export SHARDFS_TOKEN=%s\n' "$(head -n 1 "$tls/admin.token")"
        fi
    } >"$dir/cluster.env"
}

status() {
    local id pidfile any=0 down=0
    for id in $META_IDS; do
        pidfile="$dir/meta-$id.pid"
        [ -f "$pidfile" ] || [ -d "$dir/meta-$id" ] || continue
        any=1
        if alive "$pidfile"; then
            echo "metaserver $id pid $(cat "$pidfile"): 127.0.0.1:$((meta_base_port + id))"
        else
            echo "metaserver $id: not running (data kept in $dir/meta-$id)"
            down=1
        fi
    done
    for id in $CHUNK_IDS; do
        pidfile="$dir/chunk-$id.pid"
        [ -f "$pidfile" ] || [ -d "$dir/chunk-$id" ] || continue
        any=1
        if alive "$pidfile"; then
            printf 'chunk server %s pid %s: ' "$id" "$(cat "$pidfile")"
            # shellcheck disable=SC2046 # the flags are words without spaces
            "$bin/shardfs-chunk" probe --addr "127.0.0.1:$((base_port + id))" $(probe_flags "$id") || down=1
        else
            echo "chunk server $id: not running (data kept in $dir/chunk-$id)"
            down=1
        fi
    done
    if [ $any = 0 ]; then
        echo "no local cluster in $dir; start one with: deploy/local-cluster.sh up"
        return 1
    fi
    "$bin/shardfs-meta" status --meta "$(meta_list)" || down=1
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

# The layout is fixed once, before anything is created: an existing
# cluster's ids, or 1..N for a new one.
META_IDS=$(meta_ids)
CHUNK_IDS=$(chunk_ids)

case "$cmd" in
    up)
        build
        setup_tls
        for id in $META_IDS; do start_meta "$id"; done
        for id in $CHUNK_IDS; do start_chunk "$id"; done
        for id in $CHUNK_IDS; do wait_healthy "$id"; done
        wait_cluster
        write_env
        wait_serving
        echo "local cluster up in $dir"
        status
        round_trip
        echo "addresses: source $dir/cluster.env   (then try: target/release/shardfs ls -l /demo)"
        ;;
    status) [ -d "$dir" ] && setup_tls existing; status ;;
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
        setup_tls
        for id in $META_IDS; do start_meta "$id"; done
        for id in $CHUNK_IDS; do start_chunk "$id"; done
        for id in $CHUNK_IDS; do wait_healthy "$id"; done
        wait_cluster
        write_env
        wait_serving
        status
        ;;
    *) echo "local-cluster.sh: unknown command $cmd" >&2; usage ;;
esac
