#!/usr/bin/env bash
# Cross-node checks against the Vagrantfile's VMs, run from the host (scripts/vm-test
# runs it; by hand: `vagrant ssh-config > F; vagrant/e2e.sh F`). Pods are network
# namespaces inside the VMs, endpoints and watching clients transient systemd units
# there; everything it makes is removed on exit.
#
#   the networks stay inside      no default route in any guest, the nodes reach each other
#   mutual TLS                    a plaintext Request to an agent's TCP port is refused
#   kernel WireGuard              node1 → node2 over WireGuard, the agents' log says "kernel module"
#   VXLAN                         node1 → node3 (node3's agent offers VXLAN only)
#   MTU                           a ping of exactly the MTU with DF crosses, one byte more does not
#   IPv6                          dual-stack endpoints, ping6 over both tunnels
#   ETHERNET payload              an L2 service on node3: ARP and ping across
#   heal                          the endpoint VM's agent killed and held down, the endpoint's pod
#                                 gone: the watching client is on the other endpoint, pinging
#   hitless restart               kill -9 of node1's and node2's agents (systemd starts them
#                                 again): 0 pings lost at 50 ms
#   kernel-module tests           tests/integration/test_wireguard_implementation.py and
#                                 test_wireguard_endpoint_move.py pass in node2 (their waits
#                                 stretched NSM_VM_TIMEOUT_SCALE times, 30 unless set)
#   throughput                    iperf3 over the mesh's WireGuard against a WireGuard link built
#                                 by hand between the same VMs (NSM_VM_RESULTS: JSON for the report)
set -euo pipefail
cfg="$1"
results=${NSM_VM_RESULTS:-}
nodes=(node1 node2 node3)
bin=/opt/nsm/bin
agent=unix:///var/lib/networkservicemesh/nsm.io.sock
failures=0

on() {  # on NODE SCRIPT: run SCRIPT as root in NODE, its output here
  # No pipefail there: `journalctl | grep -q` would fail whenever grep stops reading early.
  ssh -F "$cfg" -o BatchMode=yes -o LogLevel=ERROR "$1" 'sudo bash -s' <<<"set -eu; $2"
}
ok() { echo "  ok: $*"; }
fail() { echo "  FAIL: $*"; failures=$((failures + 1)); }
check() {  # check WHAT NODE SCRIPT
  local what="$1" out
  if out=$(on "$2" "$3" 2>&1); then ok "$what${out:+ ($out)}"; else fail "$what: $out"; fi
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  local rc=$?
  if ((rc || failures)); then  # what CI's log needs to tell why, before anything is removed
    for n in "${nodes[@]}"; do
      echo "== $n: load, and the last of its agent's log"
      on "$n" "cat /proc/loadavg; journalctl -u nsm-agent -u 'e2e-*' --no-pager -n 60 -o short-precise" 2>&1 || true
    done
  fi
  for n in "${nodes[@]}"; do
    on "$n" "systemctl stop 'e2e-*' 2>/dev/null || true
      systemctl reset-failed 'e2e-*' 2>/dev/null || true
      systemctl start nsm-agent
      for ns in \$(ip netns list | awk '/^e2e-/ {print \$1}'); do ip netns del \$ns; done
      ip link del wgbench 2>/dev/null || true
      pkill -x iperf3 || true" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

pod() {  # pod NODE NAME
  on "$1" "ip netns add $2 && ip -n $2 link set lo up"
}
endpoint() {  # endpoint NODE NAME SERVICE [nsmctl endpoint flags...]
  local node="$1" name="$2" service="$3"
  shift 3
  pod "$node" "e2e-$name"
  on "$node" "systemd-run -q --unit e2e-ep-$name $bin/nsmctl endpoint --netns e2e-$name --name $name \
    --service $service --agent $agent $*"
}
connect() {  # connect NODE POD SERVICE IFNAME: the connection as JSON
  on "$1" "NSM_CONNECT_TO=$agent $bin/nsmctl connect --timeout 60 --netns $2 --service $3 --ifname $4 -o json"
}
field() {  # field JSON PYTHON-EXPRESSION-ON-c
  python3 -c "import json, sys; c = json.load(sys.stdin); print($2)" <<<"$1"
}
wait_for() {  # wait_for NODE SECONDS SCRIPT: until SCRIPT succeeds there
  on "$1" "for _ in \$(seq $(($2 * 5))); do if $3; then exit 0; fi; sleep 0.2; done; exit 1"
}

echo "== the services run"
# Everything after needs them: an agent or the registry that does not start fails the run
# here, with its own words, instead of every later check waiting out its timeout.
for n in "${nodes[@]}"; do
  units=(nsm-agent)
  [[ $n == node1 ]] && units+=(nsm-registry)
  for unit in "${units[@]}"; do
    word=$([[ $unit == nsm-agent ]] && echo "agent serving" || echo "registry serving")
    if ! wait_for "$n" 60 "journalctl -u $unit --no-pager | grep -q '$word'"; then
      echo "  FAIL: $unit on $n does not serve:"
      on "$n" "journalctl -u $unit --no-pager | tail -20" || true
      echo "e2e.sh: the services do not run; nothing else checked"
      exit 1
    fi
  done
  echo "  ok: $n: ${units[*]} serving"
done

echo "== the networks stay inside"
for n in "${nodes[@]}"; do
  # shellcheck disable=SC2016 # expanded in the guest
  check "$n has no default route" "$n" '[[ -z $(ip route show default; ip -6 route show default) ]]'
  check "$n calls nothing out (timesyncd, apt timers masked)" "$n" \
    '! systemctl is-active -q systemd-timesyncd apt-daily.timer apt-daily-upgrade.timer'
done
check "node1 reaches node2 and node3" node1 'ping -c1 -W5 192.168.56.12 >/dev/null && ping -c1 -W5 192.168.56.13 >/dev/null'

echo "== mutual TLS between the VMs"
check "node1's agent refuses a plaintext Request from node2" node2 "$bin/python - <<'PY'
import grpc
from nsm_api import networkservice_pb2_grpc
from nsm_api.networkservice_pb2 import NetworkServiceRequest
stub = networkservice_pb2_grpc.NetworkServiceStub(grpc.insecure_channel('192.168.56.11:5001'))
try:
    stub.Request(NetworkServiceRequest(), timeout=10)
except grpc.RpcError as exc:
    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.code()
    print(exc.code().name)
else:
    raise SystemExit('plaintext got in')
PY"
check "the agents and the registry serve with identities" node1 \
  "systemctl show -p ExecStart nsm-agent nsm-registry | grep -c -- '--identity /etc/nsm/' | grep -qx 2"

echo "== endpoints"
endpoint node2 wg e2e-wireguard --cidr 10.251.0.0/24 --cidr fd51::/64
endpoint node3 vx e2e-vxlan --cidr 10.252.0.0/24 --cidr fd52::/64
endpoint node3 l2 e2e-ethernet --cidr 10.250.0.0/24 --payload ETHERNET
endpoint node2 heal-a e2e-heal --cidr 10.253.0.0/24
endpoint node3 heal-b e2e-heal --cidr 10.254.0.0/24
wait_for node1 60 "NSM_CONNECT_TO=$agent $bin/nsmctl get endpoints | grep -q heal-b"

echo "== connections from node1"
pod node1 e2e-client
# Empty until its connection is made: a failed connect is counted, the later checks fail
# on their own instead of the script stopping at an unset name.
declare -A peer=([wireguard]="" [vxlan]="" [ethernet]="")
wg_mtu=1420
for service in wireguard vxlan ethernet; do
  if ! out=$(connect node1 e2e-client "e2e-$service" "nsm-${service:0:5}"); then
    fail "connect to e2e-$service: $out"; continue
  fi
  wire=$(field "$out" 'c["wire"].split()[0]')
  mtu=$(field "$out" 'c["mtu"]')
  v4=$(field "$out" '[a.split("/")[0] for a in c["endpoint_ips"] if "." in a][0]')
  v6=$(field "$out" '([a.split("/")[0] for a in c["endpoint_ips"] if ":" in a] or [""])[0]')
  peer[$service]=$v4
  [[ $service != wireguard ]] || wg_mtu=$mtu
  expect=$([[ $service == wireguard ]] && echo WIREGUARD || echo VXLAN)
  if [[ $wire == "$expect" ]]; then ok "e2e-$service over $wire, MTU $mtu"; else fail "e2e-$service over $wire, expected $expect"; fi
  check "ping over $wire" node1 "ip netns exec e2e-client ping -c3 -i0.2 -W5 $v4 >/dev/null"
  check "a ping of exactly the MTU ($mtu) with DF crosses" node1 \
    "ip netns exec e2e-client ping -c1 -W5 -M do -s $((mtu - 28)) $v4 >/dev/null"
  check "one byte more does not" node1 \
    "! ip netns exec e2e-client ping -c1 -W2 -M do -s $((mtu - 27)) $v4 >/dev/null 2>&1"
  if [[ -n $v6 ]]; then
    check "IPv6 over $wire" node1 "ip netns exec e2e-client ping -6 -c3 -i0.2 -W5 $v6 >/dev/null"
  fi
done
# One L2 segment across the VMs: what ARP found for the endpoint's address on node1 is
# the MAC of the endpoint's own interface on node3.
if [[ -n ${peer[ethernet]} ]]; then
  mac=$(on node3 "dev=\$(ip -n e2e-l2 -br addr | awk '/ ${peer[ethernet]}\\// {print \$1}'); \
    ip -n e2e-l2 -br link show dev \${dev%@*} | awk '{print \$3}'" || true)
  check "ETHERNET payload: ARP on node1 finds the endpoint's own MAC on node3 (${mac:-none})" node1 \
    "[[ -n '$mac' ]] && ip -n e2e-client neigh show ${peer[ethernet]} | grep -q 'lladdr $mac'"
else
  fail "ETHERNET payload: no connection to look at ARP through"
fi
for n in node1 node2; do
  check "$n's agent chose the kernel module" "$n" \
    "journalctl -u nsm-agent --no-pager | grep -q \"implementation='kernel module'\" && ! pgrep -x wireguard-go"
done

echo "== hitless restart: kill -9 of an agent, systemd starts it again"
restart_round() {  # restart_round NODE: pings over WireGuard while NODE's agent is killed
  local node="$1" since out sent got
  since=$(on "$node" "date +%s.%N")
  on node1 "systemd-run -q --unit e2e-ping-$node --property=Type=exec \
    ip netns exec e2e-client ping -q -i0.05 -c300 -W2 ${peer[wireguard]}"
  sleep 3
  on "$node" "systemctl kill -s KILL nsm-agent"
  # The agent is serving again (systemd's RestartSec is 1 s), and the pings go on.
  if ! wait_for "$node" 60 "journalctl -u nsm-agent --since @$since --no-pager | grep -q 'agent serving'"; then
    fail "$node's agent did not come back"
  fi
  wait_for node1 40 "! systemctl is-active -q e2e-ping-$node" || true
  out=$(on node1 "journalctl -u e2e-ping-$node --no-pager | grep 'packets transmitted'" || true)
  sent=$(sed -n 's/^.*: \([0-9]*\) packets transmitted.*/\1/p' <<<"$out" | tail -1)
  got=$(sed -n 's/^.*, \([0-9]*\) received.*/\1/p' <<<"$out" | tail -1)
  if [[ -n $sent && $sent == "$got" ]]; then ok "$node: 0 of $sent pings lost"; else fail "$node: $out"; fi
  restarts+=("{\"node\": \"$node\", \"sent\": ${sent:-0}, \"received\": ${got:-0}}")
}
restarts=()
restart_round node1
restart_round node2

echo "== heal: the endpoint VM's agent killed and held down, the endpoint's pod gone"
pod node1 e2e-healer
on node1 "systemd-run -q --unit e2e-watch env NSM_CONNECT_TO=$agent $bin/nsmctl connect --watch \
  --netns e2e-healer --service e2e-heal --ifname nsm-heal"
heal_ep() {  # the endpoint e2e-watch's connection is on, and its address
  on node1 "NSM_CONNECT_TO=$agent $bin/nsmctl get connections -o json" | python3 -c '
import json, sys
for c in json.load(sys.stdin):
    if c.get("networkService") == "e2e-heal":
        print(c["networkServiceEndpointName"], c["context"]["ipContext"]["dstIpAddrs"][0].split("/")[0])'
}
if wait_for node1 60 "ip -n e2e-healer -4 addr show dev nsm-heal 2>/dev/null | grep -q inet"; then
  read -r first first_ip < <(heal_ep | head -1)
  victim=$([[ $first == heal-a ]] && echo node2 || echo node3)
  other=$([[ $first == heal-a ]] && echo heal-b || echo heal-a)
  ok "the client is on $first ($victim)"
  on "$victim" "systemctl kill -s KILL nsm-agent; systemctl stop nsm-agent
    systemctl stop e2e-ep-$first; ip netns del e2e-$first"
  if wait_for node1 60 "journalctl -u e2e-watch --no-pager | grep -q '\"endpoint\": \"$other\"'"; then
    read -r now now_ip < <(heal_ep | head -1)
    # The client's own measure: from the first silent probe to the far end answering.
    heal_ms=$(on node1 "journalctl -u e2e-watch --no-pager | grep -o 'healed ([^)]*) in [0-9]* ms' | tail -1")
    if on node1 "ip netns exec e2e-healer ping -c3 -i0.2 -W5 $now_ip >/dev/null"; then
      ok "$heal_ms to $now ($now_ip), pinging"
      heal_ms=$(grep -o '[0-9]* ms' <<<"$heal_ms" | cut -d' ' -f1)
    else
      fail "healed to $now ($now_ip) but no ping"
    fi
  else
    fail "no heal away from $first ($first_ip): $(on node1 "journalctl -u e2e-watch --no-pager | tail -5")"
  fi
  on "$victim" "systemctl start nsm-agent"
else
  fail "the watching client got no interface: $(on node1 "journalctl -u e2e-watch --no-pager | tail -5")"
fi

echo "== the WireGuard kernel-module tests, in node2"
# Software emulation starts an agent ten to thirty times slower than a host does.
out=$(on node2 "cd /nsm && NSM_TESTBED_TIMEOUT_SCALE=${NSM_VM_TIMEOUT_SCALE:-30} $bin/python -m pytest -q -p no:cacheprovider -rs \
  tests/integration/test_wireguard_implementation.py tests/integration/test_wireguard_endpoint_move.py \
  -k 'kernel_module or endpoint_move' 2>&1" || true)
if grep -qE '(^| )3 passed' <<<"$out" && ! grep -q skipped <<<"$out"; then ok "3 passed, none skipped"; else fail "$out"; fi

echo "== throughput: the mesh's WireGuard against a WireGuard link built by hand"
iperf() {  # iperf NODE-NETNS-PREFIX ADDRESS: Mbit/s from node1 to node2
  on node2 "$1 iperf3 -s -1 -D -B $2 >/dev/null; sleep 1"
  on node1 "$3 iperf3 -c $2 -t ${NSM_VM_IPERF_SECONDS:-5} -J" | python3 -c '
import json, sys
print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e6, 1))'
}
wg_ip=${peer[wireguard]}
key1=$(on node1 "wg genkey") key2=$(on node2 "wg genkey")
pub1=$(on node1 "wg pubkey <<<'$key1'") pub2=$(on node2 "wg pubkey <<<'$key2'")
hand_link() {  # hand_link NODE KEY PEER-PUB PEER-IP ADDRESS (the pod's MTU, for a like-for-like TCP)
  on "$1" "ip link add wgbench type wireguard
    wg set wgbench private-key <(echo '$2') listen-port 51999 peer '$3' endpoint $4:51999 allowed-ips 10.249.0.0/30
    ip addr add $5/30 dev wgbench; ip link set wgbench mtu $wg_mtu up"
}
hand_link node1 "$key1" "$pub2" 192.168.56.12 10.249.0.1
hand_link node2 "$key2" "$pub1" 192.168.56.11 10.249.0.2
# Alternating rounds, the median of each: a VM under emulation is a noisy machine.
meshes=() hands=()
for _ in 1 2 3; do
  meshes+=("$(iperf "ip netns exec e2e-wg" "$wg_ip" "ip netns exec e2e-client")")
  hands+=("$(iperf "" 10.249.0.2 "")")
done
on node1 "ip link del wgbench"
on node2 "ip link del wgbench"
median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
mesh=$(median "${meshes[@]}") hand=$(median "${hands[@]}")
ratio=$(python3 -c "print(round($mesh / $hand, 2))")
ok "mesh $mesh Mbit/s, by hand $hand Mbit/s: ratio $ratio (software emulation: only the ratio means anything)"
if [[ -n $results ]]; then
  python3 - "$results" "$mesh" "$hand" "$wg_mtu" "[$(IFS=,; echo "${restarts[*]}")]" "${heal_ms:-0}" \
    "${meshes[*]}" "${hands[*]}" <<'PY'
import json, sys
path, mesh, hand, mtu, restarts, heal, meshes, hands = sys.argv[1:]
json.dump({"mesh_mbps": float(mesh), "hand_mbps": float(hand), "ratio": float(mesh) / float(hand),
           "mtu": int(mtu), "rounds": {"mesh": [float(x) for x in meshes.split()],
                                       "hand": [float(x) for x in hands.split()]},
           "restarts": json.loads(restarts), "heal_ms": int(heal)}, open(path, "w"), indent=1)
PY
fi

if ((failures)); then echo "e2e.sh: $failures check(s) failed"; exit 1; fi
echo "e2e.sh: every check passed"
