#!/usr/bin/env bash
# Provision one VM: the project's own setup, then the agent (and on node1 the
# registry) as systemd services on the private network.
set -euo pipefail
name="$1" ip="$2" registry_ip="$3" mechanisms="${4:-WIREGUARD,VXLAN}"

cd /nsm
./scripts/setup
# The VMs reach each other's shells for e2e.sh (test VMs only).
install -d -m 700 /home/vagrant/.ssh
[[ -f /nsm/vagrant/.e2e_key ]] || ssh-keygen -q -t ed25519 -N "" -f /nsm/vagrant/.e2e_key
install -m 600 -o vagrant /nsm/vagrant/.e2e_key /home/vagrant/.ssh/id_ed25519
grep -qf /nsm/vagrant/.e2e_key.pub /home/vagrant/.ssh/authorized_keys || cat /nsm/vagrant/.e2e_key.pub >> /home/vagrant/.ssh/authorized_keys
for i in 1 2 3; do grep -q "node$i" /etc/hosts || echo "192.168.56.$((10 + i)) node$i" >> /etc/hosts; done
bin=/nsm/.venv/bin

if [[ "$name" == "node1" ]]; then
  cat > /etc/systemd/system/nsm-registry.service <<UNIT
[Unit]
Description=nsm-py registry
After=network-online.target
[Service]
ExecStart=$bin/nsm-registry --listen tcp://$ip:5002
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
fi

cat > /etc/systemd/system/nsm-agent.service <<UNIT
[Unit]
Description=nsm-py node agent
After=network-online.target
[Service]
ExecStart=$bin/nsm-agent --name $name --registry tcp://$registry_ip:5002 --tunnel-ip $ip \
  --listen unix:///var/lib/networkservicemesh/nsm.io.sock --listen tcp://$ip:5001 \
  --remote-mechanisms $mechanisms
Restart=always
KillMode=process
[Install]
WantedBy=multi-user.target
UNIT

systemctl daemon-reload
if [[ "$name" == "node1" ]]; then systemctl enable --now nsm-registry; fi
systemctl enable --now nsm-agent
