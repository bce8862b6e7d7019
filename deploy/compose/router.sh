#!/usr/bin/env bash
# A testbed router container: finds its WAN (198.18.x) and LAN interfaces,
# applies one NAT type with apply-nat.sh, then idles.
# usage: router.sh TYPE LAN_SUBNET          (e.g. router.sh symmetric 10.10.2.0/24)
set -euo pipefail
type=$1 subnet=$2
wan_if=$(ip -o -4 addr show | awk '$4 ~ /^198\.18\./ { print $2; exit }')
wan_ip=$(ip -o -4 addr show dev "$wan_if" | awk '{ split($4, a, "/"); print a[1]; exit }')
lan_prefix=${subnet%.*}.
lan_if=$(ip -o -4 addr show | awk -v p="$lan_prefix" 'index($4, p) == 1 { print $2; exit }')
[ -n "$wan_if" ] && [ -n "$lan_if" ] || { echo "router: no WAN or LAN interface"; ip -o -4 addr show; exit 1; }
# Docker's default route (via the host) is not our uplink: the public network is.
ip route del default 2>/dev/null || true
apply-nat.sh "$type" "$wan_if" "$lan_if" "$subnet" "$wan_ip"
echo "router: $type on $wan_if ($wan_ip) for $subnet on $lan_if"
touch /tmp/nat-ready
exec sleep infinity
