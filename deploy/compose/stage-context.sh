#!/usr/bin/env bash
# Stages the node image's build context in deploy/compose/.context/: the
# Dockerfile, the convoke binary (built with cargo unless CONVOKE_BIN names
# one) and the testbed scripts. Used by compose/run and monitoring/up.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${CONVOKE_BIN:-}
if [ -z "$bin" ]; then
  (cd "$root" && cargo build -q -p convoke-cli --bin convoke)
  bin=$root/target/debug/convoke
fi
ctx=$here/.context
rm -rf "$ctx"
mkdir -p "$ctx"
cp "$bin" "$ctx/convoke"
cp "$root/deploy/nat/apply-nat.sh" "$root/deploy/nat/testbed-lib.sh" "$here/router.sh" "$here/peer.sh" "$here/Dockerfile" "$ctx/"
