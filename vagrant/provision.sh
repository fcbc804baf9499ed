#!/usr/bin/env bash
# Provision one VM: the project from the wheelhouse staged at /nsm (no index, no
# network), then the agent (and on node1 the registry) as systemd units on the
# private network.
#   provision.sh NAME IP REGISTRY_IP MECHANISMS
set -euo pipefail
name="$1" ip="$2" registry_ip="$3" mechanisms="${4:-WIREGUARD,VXLAN}"
venv=/opt/nsm
bin=$venv/bin

started=$SECONDS
[[ -x $bin/python ]] || python3 -m venv "$venv"   # the box has it
# The project's wheel, every dependency and pytest (for the kernel-module test):
# the wheelhouse is the whole closure, so no resolver; no bytecode up front either
# (a module is compiled when first imported: most of lightkube's and scapy's never
# are). Under software emulation that is 22 s instead of 112.
"$bin/pip" install -q --no-index --no-deps --no-compile --no-cache-dir /nsm/wheelhouse/*.whl
echo "provision: $name installed in $((SECONDS - started)) s"
modprobe wireguard
# The identities staged for this run (vm-test made them with its CA): mutual TLS on every hop.
install -d -m 0700 /etc/nsm
install -d -m 0700 /etc/nsm/identity
install -m 0600 /nsm/pki/node-"$name"/* /etc/nsm/identity/
if [[ "$name" == "node1" ]]; then
  install -d -m 0700 /etc/nsm/registry-identity
  install -m 0600 /nsm/pki/registry/* /etc/nsm/registry-identity/
fi

if [[ "$name" == "node1" ]]; then
  cat > /etc/systemd/system/nsm-registry.service <<UNIT
[Unit]
Description=nsm-py registry
After=network-online.target
[Service]
ExecStart=$bin/nsm-registry --listen tcp://$ip:5002 --identity /etc/nsm/registry-identity
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
fi

# KillMode=process: a stopped or killed agent leaves the wireguard device and every
# wire as they are (hitless restart); RestartSec gives e2e.sh's `kill; stop` a window.
cat > /etc/systemd/system/nsm-agent.service <<UNIT
[Unit]
Description=nsm-py node agent
After=network-online.target
[Service]
ExecStart=$bin/nsm-agent --name $name --registry tcp://$registry_ip:5002 --tunnel-ip $ip \\
  --listen unix:///var/lib/networkservicemesh/nsm.io.sock --listen tcp://$ip:5001 \\
  --remote-mechanisms $mechanisms --identity /etc/nsm/identity
Restart=always
RestartSec=1
KillMode=process
[Install]
WantedBy=multi-user.target
UNIT

systemctl daemon-reload
if [[ "$name" == "node1" ]]; then systemctl enable --now nsm-registry; fi
systemctl enable --now nsm-agent
