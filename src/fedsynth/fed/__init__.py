"""Federation: strategies (pure functions over state dicts), the in-process engine, and the
Flower adapters (``fed.flower``, the only module importing ``flwr``; ``fed.node`` and
``fed.worker`` do a hospital node's work without it).

Names are imported lazily (PEP 562), so that ``fedsynth.fed.flower`` -- loaded by Flower in a
new process for every message -- does not import torch unless it needs it.
"""

from importlib import import_module
from typing import Any

_NAMES = {
    "Federation": "engine", "Reporter": "engine", "RunPlan": "engine", "RunResult": "engine", "StopRun": "engine",
    "eval_rounds": "engine", "sample_clients": "engine",
    "InProcessClients": "inprocess", "build_in_process": "inprocess",
    "ClientState": "client", "client_round": "client", "server_round": "server",
    "ClientUpdate": "strategies", "Strategy": "strategies", "FedAvg": "strategies", "Local": "strategies",
    "build_strategy": "strategies", "weighted_average": "strategies",
}

__all__ = list(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
