"""The agent's Request chain, in order: the one list `nsm-agent` serves and the tests build."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from nsm_agent.datapath import veth, vxlan
from nsm_agent.datapath.netlink import NetlinkThread
from nsm_agent.decisions.excluded_prefixes import IPNetwork
from nsm_agent.netns.resolve import NetnsRef, NetnsResolver
from nsm_agent.pipeline.client_netns import ClientNetns
from nsm_agent.pipeline.connect import ConnectEndpoint
from nsm_agent.pipeline.discover import Discover
from nsm_agent.pipeline.journal import Journal
from nsm_agent.pipeline.kernel_wire import KernelWire, VethOps
from nsm_agent.pipeline.link_watch import LinkWatch
from nsm_agent.pipeline.node_exclusions import NodeExclusions
from nsm_agent.pipeline.remote_mechanism import RemoteMechanismClient, RemoteMechanismServer, TunnelKinds
from nsm_agent.pipeline.select import Locator, Select
from nsm_agent.pipeline.tunnel_wire import TunnelWire, VxlanOps
from nsm_agent.pipeline.validate import ValidateRequest
from nsm_agent.registry.client import RegistryClient
from nsm_agent.state.journal import JournalStore
from nsm_common.chain.authorize import Authorize
from nsm_common.chain.begin import Begin
from nsm_common.chain.chain import Step
from nsm_common.chain.monitor import ConnectionEvents, Monitor
from nsm_common.chain.path_tokens import PresentedToken, SignSegment
from nsm_common.chain.update_path import UpdatePath
from nsm_common.identity.source import IdentitySource
from nsm_common.identity.spiffe_id import Roles
from nsm_common.policy.policies import Policies


@dataclass
class Security:
    """Path tokens and policies: this hop's identity (None: none, no tokens) and its policies."""

    identity: IdentitySource | None
    policies: Policies
    roles: Callable[[], Roles | None]

    @classmethod
    def without_identity(cls) -> Security:
        """No identity: no tokens; ownership of connections and the site policies still hold."""
        return cls(None, Policies(tokens=False), lambda: None)


@dataclass
class Datapath:
    """What the steps ask of the kernel, besides the netlink thread they run it on."""

    veth_ops: VethOps = veth
    vxlan_ops: VxlanOps = vxlan
    ifname_in_use: Callable[[NetlinkThread, NetnsRef, str, str], bool] = field(default=veth.ifname_in_use)


def agent_steps(
    *,
    name: str,
    default_lifetime: float,
    max_lifetime: float,
    netlink: NetlinkThread,
    resolver: NetnsResolver,
    registry: RegistryClient,
    locator: Locator,
    kinds: TunnelKinds,
    events: ConnectionEvents,
    journal: JournalStore,
    begin: Begin,
    connect: ConnectEndpoint,
    security: Security | None = None,
    datapath: Datapath | None = None,
    link_watch: LinkWatch | None = None,
    excluded: Callable[[], Sequence[IPNetwork]] = tuple,
) -> list[Step]:
    """Every step of the agent's chain, in the order a Request meets them. EXCLUDED: the
    node's excluded prefixes now (none by default)."""
    dp = datapath or Datapath()
    security = security or Security.without_identity()
    authorize = Authorize(security.policies, security.identity, security.roles, name)
    begin.may_touch = authorize.may_touch  # who may refresh or close, asked under Begin's lock
    return [
        ValidateRequest(kinds.supported()),
        PresentedToken(),
        UpdatePath(name, default_lifetime, max_lifetime),
        SignSegment(security.identity, name),
        authorize,
        begin,
        Journal(journal),
        Monitor(events),
        *([link_watch] if link_watch is not None else []),
        ClientNetns(name, resolver, netlink, dp.ifname_in_use),
        RemoteMechanismServer(kinds),
        Discover(registry),
        Select(locator),
        TunnelWire(name, resolver, netlink, kinds, dp.vxlan_ops),
        KernelWire(name, resolver, netlink, dp.veth_ops),
        RemoteMechanismClient(kinds, list(kinds.supported())),
        NodeExclusions(excluded),  # next to the call: a reply it refuses has no wire yet
        connect,
    ]
