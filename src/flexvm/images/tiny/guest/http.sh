#!/bin/sh
# Answers one HTTP request: nc -ll runs this per connection with the socket on stdin/stdout.
#   GET /                  the hostname
#   GET /burn?seconds=N    keep one CPU busy N seconds (at most 120), then answer
#   GET /info              name, cpus, mem_kib, disk_bytes, uptime, boots, ip as key=value lines
. /usr/lib/flexvm/lib.sh

reply() {  # status, body
    printf 'HTTP/1.0 %s\r\nContent-Type: text/plain\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' \
        "$1" "${#2}" "$2"
    exit 0
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
        case $seconds in
            ''|*[!0-9]*) reply "400 Bad Request" "seconds must be a whole number of seconds (0-120)$NL" ;;
        esac
        seconds=${seconds#"${seconds%%[!0]*}"}   # no leading zeros: $((010)) is octal
        [ ${#seconds} -gt 3 ] && seconds=999       # far too long for $(( )) is just "too many"
        seconds=$((${seconds:-0} > 120 ? 120 : ${seconds:-0}))
        burn "$seconds"
        reply "200 OK" "burned $seconds s$NL"
        ;;
    *)
        reply "404 Not Found" "no such path: $path$NL"
        ;;
esac
