#!/usr/bin/env bash
# Cross-node checks between the VMs, run on node1 after `vagrant up`:
#   vagrant ssh node1 -c /nsm/vagrant/e2e.sh
# An endpoint on node2 (whose agent takes WireGuard first) and one on node3 (VXLAN
# only); a client pod on node1 connects to both, pings across, and pings at exactly
# the MTU with Don't Fragment set. Everything it makes is removed on exit.
set -euo pipefail
bin=/nsm/.venv/bin
agent=unix:///var/lib/networkservicemesh/nsm.io.sock
pod=e2e-client
ssh_opts=(-o StrictHostKeyChecking=no -o BatchMode=yes)

# shellcheck disable=SC2029 # the command is meant to expand here, then run there
remote() { ssh "${ssh_opts[@]}" "$1" "$2"; }

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  sudo ip netns del "$pod" 2>/dev/null || true
  for n in node2 node3; do
    remote "$n" "sudo pkill -f 'nsmctl endpoint' ; sudo ip netns del e2e-ep" || true
  done
}
trap cleanup EXIT

start_endpoint() {  # node service cidr
  remote "$1" "sudo ip netns add e2e-ep && (sudo $bin/nsmctl endpoint --netns e2e-ep --name e2e-$1 \
    --service $2 --cidr $3 --agent $agent >/tmp/e2e-ep.log 2>&1 &)"
}

start_endpoint node2 e2e-wireguard 10.251.0.0/24
start_endpoint node3 e2e-vxlan 10.252.0.0/24
sleep 3
sudo ip netns add "$pod"
status=0
for service in e2e-wireguard e2e-vxlan; do
  out=$(sudo NSM_CONNECT_TO=$agent "$bin/nsmctl" connect --netns "$pod" --service "$service" \
        --ifname "nsm-${service#e2e-}" -o json)
  read -r peer mtu wire < <(echo "$out" | python3 -c '
import json, sys
c = json.load(sys.stdin)
print(c["endpoint_ips"][0].split("/")[0], c["mtu"], c["wire"].split()[0])')
  echo "$service: over $wire, MTU $mtu, peer $peer"
  [[ "$service" == "e2e-${wire,,}" ]] || { echo "expected ${service#e2e-}, got $wire"; status=1; }
  sudo ip netns exec "$pod" ping -c 3 "$peer" || status=1
  sudo ip netns exec "$pod" ping -c 1 -M "do" -s $((mtu - 28)) "$peer" || status=1
  if sudo ip netns exec "$pod" ping -c 1 -M "do" -s $((mtu - 27)) "$peer" 2>/dev/null; then
    echo "a packet over the MTU crossed: expected 'message too long'"; status=1
  fi
done
sudo journalctl -u nsm-agent --no-pager | grep -o 'implementation=[a-z -]*' | tail -1
exit "$status"
