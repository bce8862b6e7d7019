#!/usr/bin/env bash
# A testbed peer container, behind its router.
# usage: peer.sh inviter|invitee ROUTER_IP
#   inviter: `convoke invite` sends /shared/payload, hands over the RSVP when
#            the invitee writes one (as a person pasting it would).
#   invitee: `convoke join --yes`, checks what arrives, writes /shared/result:
#            "PHASE SECONDS" (single-token, rsvp, predicted, birthday) or "failed".
#            "relay SECONDS" when the session runs through the relay.
# env: STUN (default "198.18.0.10:3478 198.18.0.13:3478"), RSVP_TIMEOUT seconds (default 5),
#      LIMIT seconds the invitee tries in all (default 90), RELAY (HOST:PORT: the
#      inviter names this relay in its invitation; default none).
set -euo pipefail
role=$1 router=$2
shared=/shared
stun_args=()
for s in ${STUN:-198.18.0.10:3478 198.18.0.13:3478}; do stun_args+=(--stun "$s"); done
relay_args=()
[ -n "${RELAY:-}" ] && relay_args=(--relay "$RELAY")
ip route replace default via "$router"
addr=$(ip -o -4 addr show scope global | awk '{ split($4, a, "/"); print a[1]; exit }')
export CONVOKE_KEY=/tmp/identity.key XDG_RUNTIME_DIR=/tmp
# shellcheck source=../nat/testbed-lib.sh
. "$(dirname "$0")/testbed-lib.sh"

case $role in
  inviter)
    head -c 1048576 /dev/urandom >"$shared/payload"
    convoke --json invite --listen "$addr:0" "${stun_args[@]}" "${relay_args[@]}" --rsvp-timeout "${RSVP_TIMEOUT:-5}s" \
      --token-out "$shared/token" --control /tmp/convoke.sock <"$shared/payload" >/dev/null 2>"$shared/inviter.log" &
    pid=$!
    for _ in $(seq 1200); do
      kill -0 $pid 2>/dev/null || break
      if complete "$shared/rsvp" && [ ! -e /tmp/handed ]; then
        touch /tmp/handed
        convoke rsvp --control /tmp/convoke.sock "$(cat "$shared/rsvp")" || true
      fi
      sleep 0.1
    done
    wait $pid || true
    exec sleep infinity ;;
  invitee)
    for _ in $(seq 600); do complete "$shared/token" && break; sleep 0.1; done
    complete "$shared/token" || { echo "failed no-invitation" >"$shared/result"; exit 1; }
    convoke --json join "$(cat "$shared/token")" --listen "$addr:0" "${stun_args[@]}" --yes \
      --rsvp-out "$shared/rsvp" --control /tmp/convoke.sock </dev/null >"$shared/received" 2>"$shared/invitee.log" &
    pid=$!
    result=failed
    for _ in $(seq $((${LIMIT:-90} * 10))); do
      conn=$(event "$shared/invitee.log" connected)
      if [ -n "$conn" ]; then
        result=$(outcome "$conn" $pid "$shared/payload" "$shared/received" "$(event "$shared/inviter.log" connected)")
        break
      fi
      [ -n "$(event "$shared/inviter.log" attempt_failed)" ] && break
      sleep 0.1
    done
    kill $pid 2>/dev/null || true
    echo "$result" >"$shared/result"
    echo "invitee: $result" ;;
  *) echo "peer.sh: role must be inviter or invitee" >&2; exit 2 ;;
esac
