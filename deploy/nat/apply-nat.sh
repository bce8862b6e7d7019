#!/usr/bin/env bash
# Turns this (network namespace or container) into a NAT router of one
# RFC 4787 type. Shared by the namespace testbed (deploy/testbed/) and the
# compose testbed (deploy/compose/); the rules are the ones verified in
# docs/DESIGN.md §8.
#
# usage: apply-nat.sh TYPE WAN_IF LAN_IF LAN_SUBNET WAN_IP
#   TYPE: full-cone        endpoint-independent mapping and filtering (eim-eif)
#         restricted-cone  EIM, address-dependent filtering            (eim-adf)
#         port-restricted  EIM, address+port-dependent filtering       (eim-apdf),
#                          what a Linux home router does (MASQUERADE)
#         symmetric        address+port-dependent mapping and filtering (apdm-apdf)
#   Every type also drops new connections from the WAN to the router itself,
#   as a real home router does: without that drop an early probe to the router
#   makes a conntrack entry that forces the router to remap its host's port
#   and cone × cone punching fails.
set -euo pipefail
if [ $# -ne 5 ]; then
  sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
fi
type=$1 wan=$2 lan=$3 subnet=$4 wan_ip=$5

# (a container gets it from its runtime: /proc/sys is read-only there)
[ "$(cat /proc/sys/net/ipv4/ip_forward)" = 1 ] || sysctl -qw net.ipv4.ip_forward=1
nft flush ruleset
conntrack -F >/dev/null 2>&1 || true

# Forwarding filter for the conntrack-based types: out freely, back in only
# as a reply (address+port-dependent filtering).
conntrack_filter() {
  nft -f - <<NFT
table ip filter {
  chain forward { type filter hook forward priority filter; policy drop;
    iifname "$lan" oifname "$wan" ip saddr $subnet accept
    iifname "$wan" oifname "$lan" ct state established,related accept
  }
}
NFT
}

# Endpoint-independent mapping with a dynamic map from the public port to
# the private address and port, so any outside host can reach a mapping.
cone() {
  local filter=$1
  nft -f - <<NFT
table ip nat {
  map cone { type inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout 120s; }
  chain prerouting { type nat hook prerouting priority dstnat; policy accept;
    iifname "$wan" meta l4proto udp dnat to udp dport map @cone
  }
  chain postrouting { type nat hook postrouting priority srcnat; policy accept;
    oifname "$wan" meta l4proto udp update @cone { udp sport timeout 120s : ip saddr . udp sport }
    oifname "$wan" ip saddr $subnet snat to $wan_ip
  }
}
table ip filter {
  set contacted { type ipv4_addr . inet_service . ipv4_addr; flags dynamic,timeout; timeout 120s; }
  chain forward { type filter hook forward priority filter; policy accept;
    oifname "$wan" meta l4proto udp update @contacted { ip saddr . udp sport . ip daddr }
    $filter
  }
}
NFT
}

case $type in
  full-cone) cone "" ;;
  restricted-cone)
    cone "iifname \"$wan\" ct state established,related accept
    iifname \"$wan\" ip daddr . udp dport . ip saddr @contacted accept
    iifname \"$wan\" drop" ;;
  port-restricted)
    nft -f - <<NFT
table ip nat {
  chain postrouting { type nat hook postrouting priority srcnat; policy accept;
    oifname "$wan" ip saddr $subnet masquerade
  }
}
NFT
    conntrack_filter ;;
  symmetric)
    nft -f - <<NFT
table ip nat {
  chain postrouting { type nat hook postrouting priority srcnat; policy accept;
    oifname "$wan" ip saddr $subnet masquerade fully-random
  }
}
NFT
    conntrack_filter ;;
  *) echo "apply-nat.sh: unknown NAT type '$type' (full-cone, restricted-cone, port-restricted, symmetric)" >&2; exit 2 ;;
esac

nft -f - <<NFT
table inet cpe {
  chain input { type filter hook input priority filter; policy accept;
    iifname "$wan" ct state new drop
  }
}
NFT
