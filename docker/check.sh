#!/bin/sh
# make docker-check: build the image and run it in Databox mode against `jobstore fake-arbiter`,
# as root with dockerd (installed with apt and started when missing). Submits and completes a job,
# restarts the store and finds the job again, starts the image on a root-owned bind-mounted
# /database and waits for each store to report healthy; then removes everything it created.
#
# Without network access to Docker Hub the base image is built from Debian bookworm packages
# (docker/base.sh) and cached as $JOBSTORE_DOCKER_CACHE/bookworm-python3.11.tar (default
# /var/cache/jobstore-docker); delete that file to rebuild it. BASE=python:3.11-slim uses a
# pullable base instead.
set -eu
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "docker-check: run as root (it starts containers and dockerd)" >&2; exit 2; }

run=jobstore-check-$$
cache=${JOBSTORE_DOCKER_CACHE:-/var/cache/jobstore-docker}
image=$run:latest
net=$run
tmp=$(mktemp -d /tmp/$run.XXXXXX)
started_dockerd=
imported_base=
say() { printf '== %s\n' "$*"; }

cleanup() {
    status=$?
    say "cleaning up"
    for c in $run-arbiter $run-store $run-bind; do docker rm -f "$c" >/dev/null 2>&1 || true; done
    docker network rm "$net" >/dev/null 2>&1 || true
    docker volume rm "$run-data" >/dev/null 2>&1 || true
    docker rmi "$image" >/dev/null 2>&1 || true
    [ -z "$imported_base" ] || docker rmi "$imported_base" >/dev/null 2>&1 || true
    docker image prune -f --filter "label=jobstore-check=$run" >/dev/null 2>&1 || true
    rm -rf "$tmp"
    left=$(docker ps -aq --filter "name=$run"; docker images -q "$run*"; docker network ls -q --filter "name=$run"; docker volume ls -q --filter "name=$run")
    [ -z "$left" ] && say "nothing of $run is left" || { say "left behind: $left"; status=1; }
    if [ -n "$started_dockerd" ]; then
        kill "$started_dockerd" 2>/dev/null && wait "$started_dockerd" 2>/dev/null || true
        say "stopped the dockerd this check started"
    fi
    [ "$status" = 0 ] && say "docker-check passed" || say "docker-check FAILED ($status)"
    exit "$status"
}
trap cleanup EXIT INT TERM

if ! command -v dockerd >/dev/null; then
    say "installing docker.io"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
    say "starting dockerd (log: $tmp/dockerd.log)"
    dockerd >"$tmp/dockerd.log" 2>&1 &
    started_dockerd=$!
    i=0
    until docker info >/dev/null 2>&1; do
        i=$((i + 1)); [ $i -le 60 ] || { cat "$tmp/dockerd.log"; exit 1; }; sleep 1
    done
fi

if [ -n "${BASE:-}" ]; then
    base=$BASE
else
    if [ ! -f "$cache/bookworm-python3.11.tar" ]; then
        say "building the Python 3.11 base from Debian bookworm (cached in $cache)"
        sh docker/base.sh "$cache/bookworm-python3.11.tar"
    fi
    base=$run-base:latest
    docker import "$cache/bookworm-python3.11.tar" "$base" >/dev/null
    imported_base=$base
fi
say "building the image on $base"
docker build -q --label "jobstore-check=$run" --build-arg "BASE=$base" -f docker/Dockerfile -t "$image" . >/dev/null
docker run --rm --entrypoint sh "$image" -c 'echo "image: $(jobstore --version), $(python3 --version), user $(id -un), workdir $(pwd)"'

# The zestdb example key pair, as docs/databox.md uses; the fake arbiter serves with it too.
mkdir -p "$tmp/secrets"
printf %s c3RvcmU= >"$tmp/secrets/ARBITER_TOKEN"
printf %s 'EKy(xjAnIfg6AT+OGd?nS1Mi5zZ&b*VXA@WxNLLE' >"$tmp/secrets/ZMQ_SECRET_KEY"
printf %s 'vl6wu0A@XP?}Or/&BR#LSxn>A+}L)p44/W[wXL3<' >"$tmp/secrets/ZMQ_PUBLIC_KEY"
chmod 0755 "$tmp" "$tmp/secrets" && chmod 0644 "$tmp"/secrets/*

docker network create "$net" >/dev/null
say "fake arbiter"
docker run -d --name "$run-arbiter" --network "$net" --network-alias arbiter --no-healthcheck \
    --entrypoint jobstore "$image" fake-arbiter --endpoint tcp://0.0.0.0:4444 \
    --store jobstore-sensor=c3RvcmU= --container app1=YXBw --container driver1=ZHJpdmVy \
    --grant 'app1:jobstore-sensor:POST:/sensor-jobs/*' --grant 'app1:jobstore-sensor:GET:/sensor-jobs/*' \
    --grant 'driver1:jobstore-sensor:POST:/*' --grant 'driver1:jobstore-sensor:GET:/*' >/dev/null

store() { # NAME DATABASE-MOUNT: a store in Databox mode, named jobstore-sensor to the arbiter
    docker run -d --name "$1" --network "$net" --health-interval 2s --health-start-period 60s \
        -e DATABOX_LOCAL_NAME=jobstore-sensor -e DATABOX_ARBITER_ENDPOINT=tcp://arbiter:4444 \
        -v "$tmp/secrets:/run/secrets:ro" -v "$2:/database" "$image" >/dev/null
}
healthy() { # NAME: wait until docker reports the container healthy
    i=0
    while :; do
        state=$(docker inspect -f '{{.State.Health.Status}}' "$1")
        [ "$state" = healthy ] && break
        i=$((i + 1))
        if [ $i -gt 60 ] || [ "$state" = unhealthy ]; then
            echo "$1 is $state"; docker logs "$1"; exit 1
        fi
        sleep 1
    done
    echo "$1 is healthy; its check said: $(docker inspect -f '{{(index .State.Health.Log 0).Output}}' "$1" | head -1)"
}
client() { # HOST ARGS...: a jobstore client command in another container on the network
    host=$1; shift
    docker run --rm --network "$net" --no-healthcheck --entrypoint jobstore \
        -v "$tmp/secrets:/run/secrets:ro" -e DATABOX_ARBITER_ENDPOINT=tcp://arbiter:4444 \
        -e "DATABOX_ZMQ_ENDPOINT=tcp://$host:5555" -e JOBSTORE_TARGET=jobstore-sensor \
        -e JOBSTORE_LOG_LEVEL=WARNING "$image" "$@"
}
expect() { # TEXT COMMAND...: run, print, and fail unless the output holds TEXT
    want=$1; shift
    out=$("$@" 2>&1) || { echo "$out"; exit 1; }
    echo "$out"
    case $out in *"$want"*) ;; *) echo "expected: $want"; exit 1 ;; esac
}

say "store on a named volume"
docker volume create "$run-data" >/dev/null
store "$run-store" "$run-data"
healthy "$run-store"
expect "j1  submitted" client "$run-store" submit sensor-jobs '{"read": "temperature"}' \
    --client app1 --job j1 --arbiter-token YXBw --as app1
expect "ran 1 job(s)" client "$run-store" --log-level INFO work sensor-jobs --max-jobs 1 \
    --register "Sensor jobs" --exec 'echo "{\"celsius\": 20}"' --arbiter-token ZHJpdmVy --as driver1
expect 'j1  complete  client=app1  attempts=1  response={"celsius": 20}' \
    client "$run-store" status sensor-jobs j1 --client app1 --arbiter-token YXBw --as app1

say "restart the store: the job survives"
docker restart "$run-store" >/dev/null
healthy "$run-store"
expect 'j1  complete  client=app1  attempts=1  response={"celsius": 20}' \
    client "$run-store" status sensor-jobs j1 --client app1 --arbiter-token YXBw --as app1
docker stop "$run-store" >/dev/null

say "store on a root-owned bind-mounted /database (mode 0777)"
mkdir "$tmp/database" && chown root:root "$tmp/database" && chmod 0777 "$tmp/database"
store "$run-bind" "$tmp/database"
healthy "$run-bind"
expect "j2  submitted" client "$run-bind" submit sensor-jobs 2 --client app1 --job j2 \
    --arbiter-token YXBw --as app1
docker logs "$run-bind" 2>&1 | grep -E "WARNING.*data directory" || { echo "no warning about mode 0777"; exit 1; }
echo "/database on the host: $(stat -c '%U %a' "$tmp/database"), holds $(ls "$tmp/database" | tr '\n' ' ')"
[ "$(stat -c %a "$tmp/database")" = 777 ] || { echo "serve changed the mode of /database"; exit 1; }
# Files the container wrote as uid 1000 must go with the temp dir.
docker stop "$run-bind" >/dev/null
