"""Federation: strategies (pure functions over state dicts) and the in-process engine.

The Flower adapters, when added, live here too and are the only modules importing ``flwr``.
"""

from .engine import ClientState, FederatedRun, Reporter, RunResult, eval_rounds, sample_clients
from .strategies import ClientUpdate, FedAvg, Local, Strategy, build_strategy, weighted_average

__all__ = ["FederatedRun", "Reporter", "RunResult", "ClientState", "eval_rounds", "sample_clients",
           "ClientUpdate", "Strategy", "FedAvg", "Local", "build_strategy", "weighted_average"]
