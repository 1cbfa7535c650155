#!/usr/bin/env bash
# One command to a running flexvm: set up, start the server, build the tiny image, boot a first VM.
# Run again, it reuses what is there and repairs what is missing or stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

export FLEXVM_HOME=${FLEXVM_HOME:-/var/lib/flexvm}
PORT=${FLEXVM_PORT:-8470}
FLEXVM=.venv/bin/flexvm
mkdir -p "$FLEXVM_HOME/log"

# The server serves HTTPS with a certificate signed by the CA it makes at its first start (or the
# operator's own, whose CA FLEXVM_CA_FILE names); until that file exists nothing answers here.
# FLEXVM_PLAIN_HTTP=1 serves plain HTTP instead (on loopback only).
CA=${FLEXVM_CA_FILE:-$FLEXVM_HOME/tls/ca.pem}
if [ "${FLEXVM_PLAIN_HTTP:-0}" = 1 ]; then
    URL=http://127.0.0.1:$PORT
    healthy() { curl -fs "$URL/healthz" >/dev/null 2>&1; }
else
    URL=https://127.0.0.1:$PORT
    healthy() { [ -e "$CA" ] && curl -fs --cacert "$CA" "$URL/healthz" >/dev/null 2>&1; }
fi

if healthy; then
    echo "==> flexvm server already running on 127.0.0.1:$PORT"
else
    echo "==> starting flexvm serve (log: $FLEXVM_HOME/log/server.log)"
    setsid nohup "$FLEXVM" serve >>"$FLEXVM_HOME/log/server.log" 2>&1 </dev/null &
    echo $! >"$FLEXVM_HOME/server.pid"
    for _ in $(seq 1 150); do
        healthy && break
        kill -0 "$(cat "$FLEXVM_HOME/server.pid")" 2>/dev/null || { tail -20 "$FLEXVM_HOME/log/server.log" >&2; exit 1; }
        sleep 0.2
    done
fi

# Whatever is missing is made again (the server registers `local` only at its first start, so
# after `flexvm host remove local` it is added back here). True when `flexvm … show NAME` says
# there is no such thing; any other failure (the server refusing, say) stops the script.
absent() {
    local err
    if err=$("$FLEXVM" "$@" 2>&1 >/dev/null); then
        return 1
    fi
    case $err in
        *"not found"*) return 0 ;;
    esac
    echo "$err" >&2
    exit 1
}

if absent host show local; then
    echo "==> registering this machine as host local"
    $FLEXVM host add local --uri "${FLEXVM_LIBVIRT_URI:-qemu:///system}" >/dev/null
fi
$FLEXVM host show local | grep -E "^(state|accelerator|why) "

if absent image show tiny; then
    echo "==> building the tiny image"
    $FLEXVM image build tiny >/dev/null
fi
$FLEXVM image list

VM=${FLEXVM_FIRST_VM:-first-vm}
if absent vm show "$VM"; then
    echo "==> creating $VM"
    $FLEXVM vm create "$VM" --size Standard_B1ls --image tiny >/dev/null
elif [ "$($FLEXVM vm show "$VM" -o json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["power_state"])')" != running ]; then
    echo "==> starting $VM"
    $FLEXVM vm start "$VM" >/dev/null
fi

echo
$FLEXVM vm show "$VM"
echo
echo "--- console of $VM (last lines) ---"
$FLEXVM vm console "$VM" --tail 8
echo
echo "flexvm is up. Try: $FLEXVM vm list | $FLEXVM size list | $FLEXVM vm console $VM"
if [ "${FLEXVM_PLAIN_HTTP:-0}" != 1 ]; then
    echo "The API: curl --cacert $CA -H \"Authorization: Bearer \$(cat $FLEXVM_HOME/token)\" $URL/v1/vms"
fi
