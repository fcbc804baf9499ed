#!/usr/bin/env bash
# Run on node1 after `vagrant up`: an endpoint on node2 (started over ssh), a
# client pod on node1, a connection over the agents' first mechanism (WireGuard,
# with the kernel module here), pings across; then everything is removed.
set -euo pipefail
bin=/nsm/.venv/bin
agent=unix:///var/lib/networkservicemesh/nsm.io.sock
pod=check-client

cleanup() {
  sudo ip netns del "$pod" 2>/dev/null || true
  ssh -o StrictHostKeyChecking=no node2 "sudo pkill -f 'nsmctl endpoint' ; sudo ip netns del check-ep" || true
}
trap cleanup EXIT

ssh -o StrictHostKeyChecking=no node2 \
  "sudo ip netns add check-ep && (sudo $bin/nsmctl endpoint --netns check-ep --name check-ep \
   --service check --cidr 10.250.0.0/24 --agent $agent >/tmp/check-ep.log 2>&1 &)"
sleep 3
sudo ip netns add "$pod"
out=$(sudo NSM_CONNECT_TO=$agent $bin/nsmctl connect --netns "$pod" --service check --ifname nsm-1 -o json)
echo "$out"
peer=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["endpoint_ips"][0].split("/")[0])')
sudo ip netns exec "$pod" ping -c 3 "$peer"
grep -h "implementation=" /var/log/syslog 2>/dev/null | tail -1 || journalctl -u nsm-agent | grep implementation= | tail -1
