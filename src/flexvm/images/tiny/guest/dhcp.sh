#!/bin/sh
# udhcpc's event script: $1 is the event, the lease is in the environment
# ($interface, $ip, $mask as a prefix length, $router, $dns).
. /usr/lib/flexvm/lib.sh

case $1 in
    deconfig)
        ip -4 addr flush dev "$interface"
        ip link set "$interface" up
        rm -f $RUN/ip $RUN/prefix
        ;;
    bound|renew)
        old=
        [ -r $RUN/ip ] && read -r old < $RUN/ip
        [ "$old" != "$ip" ] && ip -4 addr flush dev "$interface"
        ip addr replace "$ip/${mask:-24}" dev "$interface"
        for gw in $router; do
            ip route replace default via "$gw" dev "$interface"
            break
        done
        : > /etc/resolv.conf
        for ns in $dns; do
            echo "nameserver $ns" >> /etc/resolv.conf
        done
        # Written whole then renamed: stage 2 and http.sh may read them at any moment. The
        # prefix first, so that an address is never read without its network.
        echo "${mask:-24}" > $RUN/prefix.new && mv $RUN/prefix.new $RUN/prefix
        echo "$ip" > $RUN/ip.new && mv $RUN/ip.new $RUN/ip
        # Before the ready line the address goes out in it; after, a change gets its own line.
        [ -e $RUN/ready ] && [ "$old" != "$ip" ] && say "ip=$ip"
        ;;
esac
exit 0
