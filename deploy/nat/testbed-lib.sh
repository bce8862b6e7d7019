# shellcheck shell=bash
# Helpers shared by the NAT testbeds (sourced, not run): the namespace
# matrix (deploy/testbed/nat-matrix), the compose runner (deploy/compose/run)
# and the compose peers (peer.sh, inside the image).

# profile TYPE: the simulator's profile name for a testbed NAT type
# (the matrix tables' labels); status 1 for an unknown type.
profile() {
  case $1 in
    public) echo public ;;
    full-cone) echo eim-eif ;;
    restricted-cone) echo eim-adf ;;
    port-restricted) echo eim-apdf ;;
    symmetric) echo apdm-apdf ;;
    *) return 1 ;;
  esac
}

# ladder VIA...: the furthest of the reach ladder's steps named (convoke's
# `via` values), as the simulator names it.
ladder() {
  local v best=0 rank names=(single-token rsvp predicted birthday)
  for v in "$@"; do
    case $v in
      rsvp) rank=1 ;; predicted) rank=2 ;; birthday) rank=3 ;; *) rank=0 ;;
    esac
    [ $rank -gt $best ] && best=$rank
  done
  echo "${names[$best]}"
}

# complete FILE: FILE holds at least one whole line (convoke writes its
# --token-out and --rsvp-out files as one line ending in a newline).
complete() { [ -s "$1" ] && [ -z "$(tail -c1 "$1")" ]; }

# event FILE NAME: the first JSON event line NAME in FILE (empty if none).
event() { grep -m1 "\"event\":\"$2\"" "$1" 2>/dev/null || true; }

# field JSON KEY: a scalar field of one JSON event line.
field() { sed -n "s/.*\"$2\":\"\{0,1\}\([^,\"}]*\).*/\1/p" <<<"$1"; }

# outcome CONNECTED_EVENT JOINER_PID PAYLOAD RECEIVED [INVITER_CONNECTED_EVENT]:
# once the joiner said `connected`, waits (up to 30 s) for it to finish
# receiving, then prints "PHASE SECONDS" (single-token, rsvp, predicted or
# birthday, the furthest either side saw, or relay; seconds from importing the
# invitation to the session) or "corrupt" when the file did not arrive intact.
outcome() {
  local conn=$1 pid=$2 sent=$3 got=$4 other=${5:-} w=0 phase
  while kill -0 "$pid" 2>/dev/null && [ $w -lt 300 ]; do sleep 0.1; w=$((w + 1)); done
  # The furthest step of the reach ladder either side saw: a probe may have
  # found a port that the other side's main socket held.
  phase=$(ladder "$(field "$conn" via)" "$(field "$other" via)")
  # Through a relay, whatever step found it.
  if [ "$(field "$conn" remote_kind)" = relay ] || [ "$(field "$other" remote_kind)" = relay ]; then
    phase=relay
  fi
  if cmp -s "$sent" "$got"; then
    printf '%s %.3f\n' "$phase" "$(field "$conn" elapsed_s)"
  else
    echo corrupt
  fi
}

# public_segment NS: a namespace holding the "public" segment, a bridge br0
# (198.18.0.0/16 lives on it).
public_segment() {
  ip netns add "$1"
  ip -n "$1" link set lo up
  ip -n "$1" link add br0 type bridge
  ip -n "$1" link set br0 up
}

# attach INET NS IFNAME ADDR PEER: a veth from INET's bridge into NS, named
# IFNAME there (address ADDR/16) and PEER on the bridge.
attach() {
  local inet=$1 ns=$2 ifname=$3 addr=$4 peer=$5
  ip link add "$peer" type veth peer name "$ifname" netns "$ns"
  ip link set "$peer" netns "$inet"
  ip -n "$inet" link set "$peer" master br0 up
  ip -n "$ns" addr add "$addr/16" dev "$ifname"
  ip -n "$ns" link set "$ifname" up
}

# behind_nat INET ROUTER HOST TYPE WAN_IP LAN VETH: namespace HOST (LAN.2/24)
# behind namespace ROUTER, whose WAN leg (WAN_IP, veth VETHw on INET's
# bridge) applies the NAT TYPE (deploy/nat/apply-nat.sh) to the LAN
# (LAN.0/24, veth VETHl). ROUTER and HOST must not exist yet.
behind_nat() {
  local inet=$1 router=$2 host=$3 type=$4 wan_ip=$5 lan=$6 veth=$7
  ip netns add "$router"
  ip -n "$router" link set lo up
  attach "$inet" "$router" wan "$wan_ip" "${veth}w"
  ip link add "${veth}l" type veth peer name eth0 netns "$host"
  ip link set "${veth}l" netns "$router"
  ip -n "$router" link set "${veth}l" name lan
  ip -n "$router" addr add "$lan.1/24" dev lan
  ip -n "$router" link set lan up
  ip -n "$host" addr add "$lan.2/24" dev eth0
  ip -n "$host" link set eth0 up
  ip -n "$host" route add default via "$lan.1"
  ip netns exec "$router" "$(dirname "${BASH_SOURCE[0]}")/apply-nat.sh" "$type" wan lan "$lan.0/24" "$wan_ip" >/dev/null
}

# remove_namespaces PREFIX: kills what runs in every namespace named
# PREFIX-*, removes them, and the veth ends an interrupted setup left in
# the root namespace (named PREFIX...).
remove_namespaces() {
  local ns l
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$1-" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep "^$1" || true); do
    ip link del "$l" 2>/dev/null || true
  done
}
