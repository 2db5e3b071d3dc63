"""One typed configuration object: `<datadir>/config.toml`, then command-line overrides.

Everything is validated at start-up so a bad value stops the daemon with one line
naming the key, instead of failing later somewhere deep in a service.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multiaddr import Multiaddr

from flockd.fl.vote_scoring import DEFAULT_VOTE_SCORING, VoteScoring, parse_vote_scoring

if TYPE_CHECKING:
    from flockd.fl.attacks import Behaviour

CONFIG_FILE = "config.toml"

DEFAULT_CONFIG_TOML = f"""\
# flockd configuration. Every key is optional; the values below are the defaults.

[node]
# Nodes only talk to nodes of the same network (gossip topics are named after it).
network = "flock-local"
# debug | info | warning | error
log_level = "info"
# Logs as JSON lines instead of key=value (also: flockd run --log-json).
log_json = false

[p2p]
# libp2p listen addresses; port 0 picks a free port (node_info reports the real one).
listen = ["/ip4/127.0.0.1/tcp/0"]
# Peers to dial at start, as multiaddrs ending in /p2p/<peer id>.
bootstrap = []
# Peer exchange stops dialling new peers beyond this many connections.
max_peers = 50

[rpc]
# The control socket is <datadir>/flockd.ipc (mode 0600); these bound what a client may send.
max_request_bytes = 1048576
max_clients = 256

[chain]
# Empty: use the embedded chain. An http(s) URL: use that external EVM node instead.
rpc_url = ""
# With rpc_url: the task registry and stake token there (`flockd deploy` fills these in).
# Empty: the contracts the embedded chain holds from genesis.
registry = ""
token = ""
# With rpc_url: the Arena and the Market there (`flockd deploy` fills these in too); empty:
# their arena_* / market_* calls fail saying so. The embedded chain has both from genesis.
arena = ""
market = ""
# Serve the embedded chain's Ethereum JSON-RPC over HTTP on 127.0.0.1:PORT (0 = off).
http_port = 0
# Host names the HTTP endpoint answers to (geth's --http.vhosts); "*" = any. A request
# naming another host is refused, which stops DNS-rebinding web pages. IP addresses
# (127.0.0.1) are always accepted.
http_vhosts = ["localhost"]
# Web page origins allowed to call it from a browser (geth's --http.corsdomain), e.g.
# ["http://localhost:3000"]; "*" = any. Empty: every request from a web page is refused.
http_corsdomain = []
# Blocks on top of a transaction before it counts as confirmed (task_join, chain_tx, the
# "safe" and "finalized" tags of the JSON-RPC endpoint).
confirmations = 2
# Blocks on top of a task's logs before the round machine acts on them. 0 (the newest
# block) is safe: a commit names the proposals its ballot judged, so a reorganisation
# cannot make it judge others (protocol/spec/round.md, "The clock").
round_confirmations = 0

[metrics]
# Prometheus text on http://127.0.0.1:PORT/metrics (0 = off; docs/operator.md, "Metrics").
port = 0

[policy]
# task_join refuses a task outside these bounds: joining locks the stake until it ends.
max_rounds = 100
# Each of propose_blocks, commit_blocks, reveal_blocks.
max_window_blocks = 256
# Reveals must have room to land after the confirmation lag: reveal_blocks must also be
# at least chain.confirmations + 4.
min_reveal_blocks = 8
# Slash per judgement, basis points of the pool's stake.
max_slash_bps = 1000
# rounds x (2 x propose_blocks + commit_blocks + reveal_blocks): the longest the stake is locked.
max_task_blocks = 50000

[vote]
# How this node scores proposals in per-proposal rounds: each voter's own choice, not a
# consensus rule (docs/learning.md, "Voter scoring"). local-model: the proposer's model
# on this node's validation split; guarded-contribution: each proposal's contribution to
# the round's aggregate, behind a norm and a coarse own-model guard (for skewed data);
# root-direction: each proposal's direction and size against an update trained on the
# task's public root set (its spec's root_rows; local-model for a task without one);
# root-or-local-model: accepted by either root-direction or local-model;
# contribution: the unguarded prototype.
scoring = "{DEFAULT_VOTE_SCORING}"

# Serve models over the OpenAI-compatible HTTP API, with retrieval and a web page
# (docs/serving.md). Off unless enabled:
# [serve]
# enabled = true
# host = "127.0.0.1"               # any other address needs an API key
# port = 8000
# api_key_file = ""                # else $FLOCKD_SERVE_API_KEY
# model_dir = "/path/to/hf-model"  # a Hugging Face-format causal LM directory
# knowledge = "/path/to/docs"      # .txt/.md files to retrieve from
# retrieval_top_k = 0              # chats retrieve this many chunks unless they say otherwise

# A research tool for measuring the defence: make this node MALICIOUS (docs/learning.md,
# "Attackers"). Off unless the section is added:
# [attack]
# behaviour = "collude"            # honest | label-flip | noise:SIGMA | sign-flip:SCALE |
#                                  # garbage:SIZE | random-vote | accept-all | collude, joined by +
# colluders = ["0x..."]            # the addresses acting together with this one
"""


class ConfigError(Exception):
    """A configuration value is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class NodeSection:
    network: str = "flock-local"
    log_level: str = "info"
    log_json: bool = False


@dataclass(frozen=True)
class P2PSection:
    listen: list[str] = field(default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"])
    bootstrap: list[str] = field(default_factory=list)
    max_peers: int = 50


@dataclass(frozen=True)
class RPCSection:
    max_request_bytes: int = 1 << 20
    max_clients: int = 256


@dataclass(frozen=True)
class ChainSection:
    rpc_url: str = ""
    registry: str = ""
    token: str = ""
    arena: str = ""
    market: str = ""
    http_port: int = 0
    http_vhosts: list[str] = field(default_factory=lambda: ["localhost"])
    http_corsdomain: list[str] = field(default_factory=list)
    confirmations: int = 2
    round_confirmations: int = 0


@dataclass(frozen=True)
class MetricsSection:
    port: int = 0


@dataclass(frozen=True)
class PolicySection:
    """Which tasks this node joins (checked by flockd.tasks.policy)."""

    max_rounds: int = 100
    max_window_blocks: int = 256
    min_reveal_blocks: int = 8
    max_slash_bps: int = 1000
    max_task_blocks: int = 50_000


@dataclass(frozen=True)
class VoteSection:
    scoring: str = DEFAULT_VOTE_SCORING  # flockd.fl.vote_scoring.VoteScoring

    def parsed(self) -> VoteScoring:
        try:
            return parse_vote_scoring(self.scoring)
        except ValueError as exc:
            raise ConfigError(f"vote.scoring: {exc}") from None


@dataclass(frozen=True)
class AttackSection:
    behaviour: str = "honest"  # a spec for flockd.fl.attacks.parse_behaviour
    colluders: list[str] = field(default_factory=list)  # 0x-prefixed addresses

    def parsed(self) -> Behaviour:
        from flockd.fl.attacks import parse_behaviour  # numpy: only when a config is checked

        try:
            return parse_behaviour(self.behaviour)
        except ValueError as exc:
            raise ConfigError(f"attack.behaviour: {exc}") from None

    def colluder_addresses(self) -> frozenset[bytes]:
        return frozenset(bytes.fromhex(a[2:]) for a in self.colluders)


@dataclass(frozen=True)
class ServeSection:
    """`flockd serve` as a daemon service (flockd.serve.service.ServeSettings)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    api_key_file: str = ""
    vhosts: list[str] = field(default_factory=lambda: ["localhost"])
    model_dir: str = ""
    model_name: str = ""
    classifier_recipe: str = ""
    classifier_checkpoint: str = ""
    knowledge: str = ""
    retrieval_top_k: int = 0
    max_queue: int = 8
    market: bool = False  # serve the listed models this node fetched (market_fetch); may start with none


@dataclass(frozen=True)
class Config:
    node: NodeSection = field(default_factory=NodeSection)
    p2p: P2PSection = field(default_factory=P2PSection)
    rpc: RPCSection = field(default_factory=RPCSection)
    chain: ChainSection = field(default_factory=ChainSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    policy: PolicySection = field(default_factory=PolicySection)
    vote: VoteSection = field(default_factory=VoteSection)
    attack: AttackSection = field(default_factory=AttackSection)
    serve: ServeSection = field(default_factory=ServeSection)

    def with_overrides(self, **sections: dict[str, Any]) -> Config:
        """Apply flag values, e.g. with_overrides(p2p={"bootstrap": [...]}); None means unset."""
        merged = self
        for name, values in sections.items():
            current = getattr(merged, name)
            given = {k: v for k, v in values.items() if v is not None}
            section = _build_section(type(current), {**_as_dict(current), **given}, name)
            merged = replace(merged, **{name: section})
        merged.validate()
        return merged

    def validate(self) -> None:
        if self.node.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"node.log_level: {self.node.log_level!r} is not one of debug, info, warning, error")
        if not self.node.network or not self.node.network.replace("-", "").isalnum():
            raise ConfigError(f"node.network: {self.node.network!r} must be letters, digits and dashes")
        for key, addrs in (("p2p.listen", self.p2p.listen), ("p2p.bootstrap", self.p2p.bootstrap)):
            for addr in addrs:
                _check_multiaddr(key, addr, need_peer_id=key == "p2p.bootstrap")
        if not self.p2p.listen:
            raise ConfigError("p2p.listen: at least one listen address is needed")
        _check_range("p2p.max_peers", self.p2p.max_peers, 1, 10_000)
        _check_range("rpc.max_request_bytes", self.rpc.max_request_bytes, 1024, 256 << 20)
        _check_range("rpc.max_clients", self.rpc.max_clients, 1, 100_000)
        _check_range("chain.http_port", self.chain.http_port, 0, 65535)
        _check_range("chain.confirmations", self.chain.confirmations, 0, 1000)
        _check_range("chain.round_confirmations", self.chain.round_confirmations, 0, 1000)
        for host in self.chain.http_vhosts:
            if not host or any(c in host for c in "/: \t"):
                raise ConfigError(f"chain.http_vhosts: {host!r} is not a host name (no scheme, port or path)")
        for origin in self.chain.http_corsdomain:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ConfigError(f"chain.http_corsdomain: {origin!r} must be \"*\" or an http(s):// origin")
        _check_range("metrics.port", self.metrics.port, 0, 65535)
        _check_range("policy.max_rounds", self.policy.max_rounds, 1, 10**6)
        _check_range("policy.max_window_blocks", self.policy.max_window_blocks, 1, 10**6)
        _check_range("policy.min_reveal_blocks", self.policy.min_reveal_blocks, 1, 10**6)
        _check_range("policy.max_slash_bps", self.policy.max_slash_bps, 0, 10_000)
        _check_range("policy.max_task_blocks", self.policy.max_task_blocks, 1, 10**9)
        url = self.chain.rpc_url
        if url and not url.startswith(("http://", "https://")):
            raise ConfigError(f"chain.rpc_url: {url!r} must be an http:// or https:// URL")
        for key in ("registry", "token", "arena", "market"):
            value = getattr(self.chain, key)
            if value and not _is_address(value):
                raise ConfigError(f"chain.{key}: {value!r} is not a 0x-prefixed 20-byte address")
        if url and not (self.chain.registry and self.chain.token):
            raise ConfigError("chain.rpc_url is set: chain.registry and chain.token must name its contracts (flockd deploy)")
        self.vote.parsed()
        self.attack.parsed()
        if self.serve.enabled:
            from flockd.serve.service import ServeConfigError, settings_from_section

            try:
                settings_from_section(self.serve).check()
            except ServeConfigError as exc:
                raise ConfigError(f"serve: {exc}") from None
        for value in self.attack.colluders:
            if not _is_address(value):
                raise ConfigError(f"attack.colluders: {value!r} is not a 0x-prefixed 20-byte address")


def load_config(datadir: Path) -> Config:
    path = datadir / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{path} not found: run `flockd init --datadir {datadir}` first")
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config_from_dict(raw)


def config_from_dict(raw: dict[str, Any]) -> Config:
    known = {f.name: f.type for f in fields(Config)}
    for name in raw:
        if name not in known:
            raise ConfigError(f"unknown section [{name}] (known: {', '.join(known)})")
    sections = {}
    for f in fields(Config):
        section_raw = raw.get(f.name, {})
        if not isinstance(section_raw, dict):
            raise ConfigError(f"[{f.name}] must be a table")
        section_type = type(getattr(Config(), f.name))
        sections[f.name] = _build_section(section_type, section_raw, f.name)
    config = Config(**sections)
    config.validate()
    return config


def _as_dict(section: Any) -> dict[str, Any]:
    return {f.name: getattr(section, f.name) for f in fields(section)}


def _build_section(section_type: type[Any], values: dict[str, Any], name: str) -> Any:
    defaults = section_type()
    out = {}
    for key, value in values.items():
        if not hasattr(defaults, key):
            allowed = ", ".join(f.name for f in fields(section_type))
            raise ConfigError(f"{name}.{key}: unknown key (known: {allowed})")
        expected = type(getattr(defaults, key))
        if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{name}.{key}: expected an integer, got {value!r}")
        if expected is list and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ConfigError(f"{name}.{key}: expected a list of strings, got {value!r}")
        if expected in (str, bool) and not isinstance(value, expected):
            raise ConfigError(f"{name}.{key}: expected {expected.__name__}, got {value!r}")
        out[key] = value
    return section_type(**out)


def _is_address(text: str) -> bool:
    return len(text) == 42 and text.startswith("0x") and _is_hex(text[2:])


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)  # int(text, 16) allows "-" and "_"


def _check_range(key: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key}: {value} is out of range [{low}, {high}]")


def _check_multiaddr(key: str, addr: str, *, need_peer_id: bool) -> None:
    try:
        ma = Multiaddr(addr)
    except Exception as exc:
        raise ConfigError(f"{key}: {addr!r} is not a multiaddr ({exc})") from None
    if need_peer_id and "p2p" not in [p.name for p in ma.protocols()]:
        raise ConfigError(f"{key}: {addr!r} needs a /p2p/<peer id> part")
