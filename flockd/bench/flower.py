"""Flower (flwr) running the same federated task as flockd, for the attack benchmark.

`scripts/bench flower [--strategy fedavg|multi-krum] [--fraction F] ...` runs one Flower
federation and prints its rounds; `scripts/bench attack` runs it beside flockd.

What runs: Flower's own machinery, for real. Its legacy gRPC stack (`grpc-bidi` Fleet
API: `start_grpc_server` + `flwr.server.Server.fit`, the code behind the deprecated
`flwr.server.start_server`) listens on 127.0.0.1; one `flwr.client.NumPyClient` per node
connects through `flwr.client.start_client` (threads of this process), and Flower's own
strategies aggregate: `flwr.server.strategy.FedAvg`, and `flwr.server.strategy.Krum` with
`num_clients_to_keep=M` (Flower's Multi-Krum). Server-side evaluation (`evaluate_fn`)
measures every round's global model on the held-out test split.

Why not Flower's simulation engine: it runs on Ray (one worker process per client slot,
each importing torch) — heavy on a shared 2-core machine — while the gRPC path is the one
a real Flower deployment's messages take. Server and clients share one process, as
flockd's simulated nodes do, so wall times compare like with like.

Same task as flockd: `load_recipe("digits-mlp")`, `recipe.train` with the same per-node
seeds (`training_seed(seed, round, node)`), node i's data `DataSpec(i, n, "iid", seed)`
(it trains on its train split), the test split from `recipe.load_test`. Malicious clients
apply `flockd.fl.attacks`: label flipping on their training data, and since Flower clients
send weights, not deltas, a poisoned client sends `global + poison_delta(trained - global)`.

Installing: flwr comes from the `bench` extra (`pip install -e .[bench]`, pinned in
setup.cfg), which `scripts/bench attack|flower` installs on first use and `scripts/test`
never does. It is why flockd pins rich 14.x: every flwr >= 1.40 requires rich<15.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import random
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from flockd.fl.attacks import Behaviour, attack_rng, poison_delta, training_split
from flockd.fl.data import DataSpec
from flockd.fl.recipe import Recipe, limit_torch_threads, load_recipe, training_seed
from flockd.fl.tensors import Tensors, load_model_state, model_state, subtract

STRATEGIES = ("fedavg", "multi-krum")


def flower_available() -> bool:
    try:
        _import_flwr()
    except ImportError:
        return False
    return True


def flower_version() -> str:
    return str(_import_flwr().__version__)


def _import_flwr() -> Any:
    # Telemetry off before the first import: Flower otherwise posts events over HTTPS.
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    with warnings.catch_warnings():  # typer (flwr's CLI) warns about click 8.5 on import
        warnings.simplefilter("ignore", DeprecationWarning)
        flwr = importlib.import_module("flwr")
        importlib.import_module("flwr.client")
    logging.getLogger("flwr").setLevel(logging.ERROR)
    return flwr


@dataclass(frozen=True)
class FlowerRound:
    round: int
    accuracy: float
    loss: float
    seconds: float  # wall time: server sends fit, clients train and reply, aggregate, evaluate


@dataclass
class FlowerRun:
    strategy: str
    nodes: int
    rounds_asked: int
    seed: int
    malicious: list[int]
    behaviour: str
    flwr_version: str
    initial_accuracy: float = 0.0
    setup_seconds: float = 0.0  # gRPC server up and every client connected
    rounds: list[FlowerRound] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def krum_parameters(nodes: int) -> tuple[int, int]:
    """(f, m) for Multi-Krum over ``nodes`` updates: the most Byzantine updates Krum
    tolerates (n > 2f + 2), and the n - f updates it averages."""
    f = max(0, (nodes - 3) // 2)
    return f, nodes - f


def _bind_flower_server(client_manager: Any, start: Callable[..., Any]) -> tuple[Any, str]:
    """Flower's gRPC server on a free 127.0.0.1 port below the ephemeral range (the
    clients' own outgoing ports come from that range, so a port probed there can be taken
    by the time gRPC binds it). Flower exits (SystemExit) on a busy port: try another."""
    draw = random.Random()
    for _ in range(50):
        port = draw.randrange(20000, 32000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        address = f"127.0.0.1:{port}"
        try:
            return start(client_manager=client_manager, server_address=address), address
        except SystemExit:
            continue
    raise RuntimeError("no free port for the Flower server")


def run_flower(
    *,
    strategy: str = "fedavg",
    recipe: str | Recipe = "digits-mlp",
    nodes: int = 20,
    rounds: int = 10,
    seed: int = 0,
    behaviours: Mapping[int, Behaviour] | None = None,
    partition: str = "iid",
    on_round: Callable[[FlowerRound], None] | None = None,
) -> FlowerRun:
    """One Flower federation over ``nodes`` clients, every client training every round."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown Flower strategy {strategy!r} (one of {', '.join(STRATEGIES)})")
    flwr = _import_flwr()
    from flwr.client import NumPyClient
    from flwr.common import ndarrays_to_parameters
    from flwr.compat.client.app import start_client
    from flwr.server.server import init_defaults, run_fl
    from flwr.server.server_config import ServerConfig
    from flwr.server.strategy import FedAvg, Krum
    from flwr.server.superlink.fleet.grpc_bidi.grpc_server import start_grpc_server

    limit_torch_threads(1)
    task: Recipe = load_recipe(recipe) if isinstance(recipe, str) else recipe
    assigned: dict[int, Behaviour] = dict(behaviours or {})
    specs = [DataSpec(i, nodes, partition, seed) for i in range(nodes)]
    test = task.load_test(specs[0])
    eval_model = task.build_model(seed)
    initial = model_state(eval_model)
    names = list(initial)  # canonical (sorted) order: Flower ships a list of arrays

    def as_state(arrays: list[np.ndarray]) -> Tensors:
        return {n: np.asarray(a, dtype=np.float32) for n, a in zip(names, arrays, strict=True)}

    class Node(NumPyClient):  # type: ignore[misc]
        def __init__(self, index: int) -> None:
            self.index = index
            self.behaviour = assigned.get(index, Behaviour())
            train, _ = task.load_data(specs[index])
            self.train = training_split(self.behaviour, train, task)
            self.model = task.build_model(0)

        def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
            return list(model_state(self.model).values())

        def fit(
            self, parameters: list[np.ndarray], config: dict[str, Any]
        ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
            r = int(config["round"])  # flockd numbers rounds from 0 in training seeds
            global_state = as_state(parameters)
            load_model_state(self.model, global_state)
            stats = task.train(self.model, self.train, seed=training_seed(seed, r, self.index))
            trained = model_state(self.model)
            if self.behaviour.delta is not None:
                delta = subtract(trained, global_state)
                bad = poison_delta(self.behaviour, delta, attack_rng(seed, r, self.index, "delta"))
                trained = {n: np.add(global_state[n], bad[n], dtype=np.float32) for n in names}
            return [trained[n] for n in names], stats["samples"], {}

    run = FlowerRun(
        strategy,
        nodes,
        rounds,
        seed,
        sorted(assigned),
        str(next(iter(assigned.values()))) if assigned else "honest",
        flwr.__version__,
    )
    stamps: list[float] = []

    def evaluate(server_round: int, arrays: list[np.ndarray], config: dict[str, Any]) -> Any:
        now = time.perf_counter()
        load_model_state(eval_model, as_state(arrays))
        metrics = task.evaluate(eval_model, test)
        if server_round == 0:
            run.initial_accuracy = metrics["accuracy"]
        else:
            figures = FlowerRound(
                server_round, metrics["accuracy"], metrics["loss"], now - stamps[-1]
            )
            run.rounds.append(figures)
            if on_round is not None:
                on_round(figures)
        stamps.append(time.perf_counter() if server_round == 0 else now)
        return metrics["loss"], {"accuracy": metrics["accuracy"]}

    common: dict[str, Any] = {
        "fraction_fit": 1.0,
        "fraction_evaluate": 0.0,
        "min_fit_clients": nodes,
        "min_available_clients": nodes,
        "evaluate_fn": evaluate,
        "on_fit_config_fn": lambda server_round: {"round": server_round - 1},
        "initial_parameters": ndarrays_to_parameters([initial[n] for n in names]),
    }
    if strategy == "fedavg":
        chosen = FedAvg(**common)
    else:
        f, m = krum_parameters(nodes)
        chosen = Krum(num_malicious_clients=f, num_clients_to_keep=m, **common)

    started = time.perf_counter()
    server, config = init_defaults(
        server=None, config=ServerConfig(num_rounds=rounds), strategy=chosen, client_manager=None
    )
    grpc_server, address = _bind_flower_server(server.client_manager(), start_grpc_server)
    errors: list[BaseException] = []

    def client_main(index: int) -> None:
        try:
            start_client(
                server_address=address,
                client=Node(index).to_client(),
                insecure=True,
                transport="grpc-bidi",
                max_retries=20,
                max_wait_time=120.0,
            )
        except BaseException as exc:  # noqa: BLE001 - reported after the run
            errors.append(exc)

    threads = [
        threading.Thread(target=client_main, args=(i,), name=f"flwr-client-{i}", daemon=True)
        for i in range(nodes)
    ]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 120
        while server.client_manager().num_available() < nodes:
            if errors or time.monotonic() > deadline:
                raise RuntimeError(f"Flower clients did not all connect: {errors!r}")
            time.sleep(0.01)
        run.setup_seconds = time.perf_counter() - started
        run_fl(server=server, config=config)
    finally:
        grpc_server.stop(grace=1)
        for t in threads:
            t.join(timeout=10)
    if len(run.rounds) != rounds:
        raise RuntimeError(f"Flower ran {len(run.rounds)} of {rounds} rounds: {errors!r}")
    return run


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench flower", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--strategy", choices=STRATEGIES, default="fedavg")
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fraction", type=float, default=0.0, help="malicious fraction")
    parser.add_argument("--attack", default="label-flip", help="flockd.fl.attacks spec")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not flower_available():
        raise SystemExit("flwr is not installed: run scripts/bench flower (it installs the bench extra)")
    from flockd.fl.attacks import assign_behaviours

    behaviours = assign_behaviours(args.nodes, args.fraction, args.attack, args.seed)

    def show(f: FlowerRound) -> None:
        if not args.json:
            print(
                f"round {f.round:3d}  accuracy {f.accuracy:.4f}  loss {f.loss:.4f}  {f.seconds:.2f}s"
            )

    run = run_flower(
        strategy=args.strategy,
        nodes=args.nodes,
        rounds=args.rounds,
        seed=args.seed,
        behaviours=behaviours,
        on_round=show,
    )
    if args.json:
        print(json.dumps(run.to_json(), indent=2))
    else:
        print(
            f"flwr {run.flwr_version} {run.strategy}: {args.nodes} clients, malicious "
            f"{run.malicious or 'none'}; initial accuracy {run.initial_accuracy:.4f}, "
            f"setup {run.setup_seconds:.2f}s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
