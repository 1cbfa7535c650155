#!/bin/sh
# Answers one HTTP request: nc -ll runs this per connection with the socket on stdin/stdout.
#   GET /                  the hostname
#   GET /burn?seconds=N    keep one CPU busy N seconds (at most 120), then answer
#   GET /info              name, cpus, mem_kib, disk_bytes, uptime, boots, ip as key=value lines
#   GET /dirty?mib=N&seconds=S
#                          keep rewriting N MiB (1-256) of memory for S seconds (at most 120),
#                          then answer mib, seconds, passes as key=value lines: a guest that is
#                          hard to live-migrate, for migration tests and benchmarks (the console
#                          shows "flexvm: dirty mib=N seconds=S" when the rewriting begins)
#   GET /note?text=WORD    store WORD (letters, digits, - and _; at most 64) on the disk, synced
#   GET /note              the stored word (404 when there is none)
#   GET /fetch?url=http://A.B.C.D[:PORT][/PATH]
#                          fetch that URL from inside the guest and answer its first 4 KiB
#                          (502 naming why when it cannot be fetched within 3 s): how tests see
#                          what one guest can reach of another. Only addresses of the guest's
#                          own network (its DHCP lease's subnet) are fetched, nothing beyond it.
. /usr/lib/flexvm/lib.sh

DIRTY_MAX_MIB=256
DIRTY_MAX_SECONDS=120
DIRTY_SPARE_KIB=24576   # what the guest keeps for itself beyond the buffer it dirties
FETCH_SECONDS=3
FETCH_MAX_BYTES=4096

reply() {  # status, body
    printf 'HTTP/1.0 %s\r\nContent-Type: text/plain\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' \
        "$1" "${#2}" "$2"
    exit 0
}

# NUMBER: $1 as a whole number capped at $2, or a 400 answer naming the parameter ($3) and
# its range ($4, default 0-$2).
whole_number() {
    case $1 in
        ''|*[!0-9]*) reply "400 Bad Request" "$3 must be a whole number (${4:-0-$2})$NL" ;;
    esac
    NUMBER=${1#"${1%%[!0]*}"}                 # no leading zeros: $((010)) is octal
    [ ${#NUMBER} -gt 3 ] && NUMBER=9999        # far too long for $(( )) is just "too many"
    NUMBER=$((${NUMBER:-0} > $2 ? $2 : ${NUMBER:-0}))
}

# MEM_AVAILABLE_KIB: what the guest's kernel could hand out now without swapping.
read_available() {
    local key value rest
    MEM_AVAILABLE_KIB=0
    while read -r key value rest; do
        if [ "$key" = MemAvailable: ]; then
            MEM_AVAILABLE_KIB=$value
            return
        fi
    done < /proc/meminfo
}

# Rewrite $1 MiB of memory over and over for $2 seconds; PASSES counts whole rewrites.
# The buffer is a file on a tmpfs of its own (its pages are guest RAM, and filling it cannot
# fill /run or /tmp). It holds random bytes, because a page of zeros migrates as a mere flag;
# each pass has one dd read every page and write it back in place, which dirties all of them
# (QEMU tracks writes, not changes of content) for the cost of a single fork. Filling the
# buffer takes a while, so the console says when the rewriting starts ("flexvm: dirty ...").
dirty_memory() {
    local dir=$RUN/dirty.$$ end i=0
    PASSES=0
    mkdir -p "$dir" && mount -t tmpfs -o "size=$(($1 + 1))m,mode=0700" tmpfs "$dir" || return 1
    if dd if=/dev/urandom of="$dir/chunk" bs=65536 count=16 2>/dev/null; then
        while [ $i -lt "$1" ]; do
            cat "$dir/chunk" || break
            i=$((i + 1))
        done > "$dir/buffer"
    fi
    rm -f "$dir/chunk"
    if [ $i -eq "$1" ]; then
        say "dirty mib=$1 seconds=$2"
        read_centis
        end=$((CENTIS + $2 * 100))
        while dd if="$dir/buffer" of="$dir/buffer" bs=1048576 count="$1" conv=notrunc 2>/dev/null; do
            PASSES=$((PASSES + 1))
            read_centis
            [ "$CENTIS" -ge "$end" ] && break
        done
    fi
    umount "$dir" && rmdir "$dir"
    [ "$PASSES" -gt 0 ]
}

# ADDRESS_NUMBER: the dotted IPv4 address $1 as a number; fails when $1 is not one.
address_number() {
    local part n=0 count=0 IFS=.
    case $1 in ''|*[!0-9.]*|*..*|.*|*.) return 1 ;; esac
    for part in $1; do
        [ ${#part} -le 3 ] || return 1
        part=${part#"${part%%[!0]*}"}        # no leading zeros: $((010)) is octal
        [ "${part:-0}" -le 255 ] || return 1
        n=$((n * 256 + ${part:-0}))
        count=$((count + 1))
    done
    [ $count -eq 4 ] || return 1
    ADDRESS_NUMBER=$n
}

# Answer the first FETCH_MAX_BYTES of the URL $1 (percent-encoded as it came in the query), if
# it is plain HTTP to an address inside the guest's own subnet.
fetch() {
    local url host target own prefix mask body why
    url=$(printf '%b' "${1//%/\\x}")
    case $url in
        http://*) ;;
        *) reply "400 Bad Request" "url must be http://ADDRESS[:PORT][/PATH]$NL" ;;
    esac
    host=${url#http://}
    host=${host%%/*}
    host=${host%%:*}
    address_number "$host" || reply "400 Bad Request" "url must name an IPv4 address, not '$host'$NL"
    target=$ADDRESS_NUMBER
    read_identity
    [ -r "$RUN/prefix" ] && read -r prefix < "$RUN/prefix"
    address_number "$IP" || reply "503 Service Unavailable" "the guest has no address yet$NL"
    own=$ADDRESS_NUMBER
    mask=$(( (0xffffffff << (32 - ${prefix:-32})) & 0xffffffff ))
    [ $((target & mask)) -eq $((own & mask)) ] \
        || reply "403 Forbidden" "$host is outside this guest's network $IP/${prefix:-32}$NL"
    # timeout bounds it, not wget's own -T: busybox 1.35's wget crashes with -T.
    set -o pipefail
    if body=$(timeout $FETCH_SECONDS wget -q -O - "$url" 2>"$RUN/fetch.$$" | head -c $FETCH_MAX_BYTES); then
        rm -f "$RUN/fetch.$$"
        reply "200 OK" "$body"
    fi
    why=$(grep '^wget: ' "$RUN/fetch.$$" | tail -n 1)
    rm -f "$RUN/fetch.$$"
    reply "502 Bad Gateway" "could not fetch $url: ${why:-no answer within $FETCH_SECONDS s}$NL"
}

read -r -t 10 method target version || exit 0
# Read the headers up to the blank line: closing a socket with unread input resets the
# connection, and the client could lose the answer.
while read -r -t 10 line; do
    [ -z "${line%"$CR"}" ] && break
done

case $method in
    GET) ;;
    *) reply "405 Method Not Allowed" "only GET is supported$NL" ;;
esac

path=${target%%\?*}
query=
case $target in *\?*) query=${target#*\?} ;; esac

case $path in
    /)
        read_identity
        reply "200 OK" "$NAME$NL"
        ;;
    /info)
        read_identity
        read_state
        read_uptime
        reply "200 OK" "name=$NAME${NL}cpus=$CPUS${NL}mem_kib=$MEM_KIB${NL}disk_bytes=$DISK_BYTES${NL}uptime=$UPTIME${NL}boots=$BOOTS${NL}ip=$IP$NL"
        ;;
    /burn)
        seconds=
        IFS='&'
        for param in $query; do
            case $param in seconds=*) seconds=${param#seconds=} ;; esac
        done
        unset IFS
        whole_number "$seconds" 120 seconds
        seconds=$NUMBER
        burn "$seconds"
        reply "200 OK" "burned $seconds s$NL"
        ;;
    /dirty)
        mib=
        seconds=
        IFS='&'
        for param in $query; do
            case $param in
                mib=*) mib=${param#mib=} ;;
                seconds=*) seconds=${param#seconds=} ;;
            esac
        done
        unset IFS
        whole_number "$mib" $DIRTY_MAX_MIB mib "1-$DIRTY_MAX_MIB"
        mib=$NUMBER
        [ "$mib" -gt 0 ] || reply "400 Bad Request" "mib must be a whole number (1-$DIRTY_MAX_MIB)$NL"
        whole_number "$seconds" $DIRTY_MAX_SECONDS seconds
        seconds=$NUMBER
        read_available
        if [ $((mib * 1024 + DIRTY_SPARE_KIB)) -gt "$MEM_AVAILABLE_KIB" ]; then
            reply "507 Insufficient Storage" "not enough free memory to dirty $mib MiB: $((MEM_AVAILABLE_KIB / 1024)) MiB available$NL"
        fi
        dirty_memory "$mib" "$seconds" || reply "500 Internal Server Error" "could not dirty $mib MiB of memory$NL"
        reply "200 OK" "mib=$mib${NL}seconds=$seconds${NL}passes=$PASSES$NL"
        ;;
    /note)
        text=
        IFS='&'
        for param in $query; do
            case $param in text=*) text=${param#text=} ;; esac
        done
        unset IFS
        if [ -z "$query" ]; then
            [ -r "$STATE/note" ] || reply "404 Not Found" "no note stored$NL"
            read -r text < "$STATE/note"
            reply "200 OK" "$text$NL"
        fi
        case $text in
            ''|*[!A-Za-z0-9_-]*) reply "400 Bad Request" "text must be 1-64 letters, digits, - or _$NL" ;;
        esac
        [ ${#text} -le 64 ] || reply "400 Bad Request" "text must be 1-64 letters, digits, - or _$NL"
        # Written whole then renamed, and synced: it is on the disk when the answer comes.
        echo "$text" > "$STATE/note.new" && mv "$STATE/note.new" "$STATE/note" && sync \
            || reply "500 Internal Server Error" "could not store the note$NL"
        reply "200 OK" "stored $text$NL"
        ;;
    /fetch)
        url=
        IFS='&'
        for param in $query; do
            case $param in url=*) url=${param#url=} ;; esac
        done
        unset IFS
        fetch "$url"
        ;;
    *)
        reply "404 Not Found" "no such path: $path$NL"
        ;;
esac
