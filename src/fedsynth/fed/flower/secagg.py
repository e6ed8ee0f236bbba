"""Secure aggregation (``fed.secure-aggregation = true``): the server learns only the weighted sum.

fedsynth does no cryptography of its own. Flower's SecAgg+ does all of it
(Bell et al. 2020, https://doi.org/10.1145/3372297.3417885): ``flwr.server.workflow.SecAggPlusWorkflow`` on
the server and ``flwr.client.mod.secaggplus_mod`` on each node. In flwr 1.42 they exist only in
the legacy Strategy/FitIns form; this module carries fedsynth's round through them without a
second round loop:

* **Server** (:class:`fedsynth.fed.flower.server_app.SecureFlowerClients`, a client pool): a
  round's ``train`` step runs the workflow once (:func:`run_secure_round`) with :class:`Relay`, a
  thin legacy strategy. Its ``configure_fit`` returns fedsynth's train request per node (the
  global weights as ``Parameters``, everything else as config values); its ``aggregate_fit``
  receives what the workflow gives any legacy strategy: one ``FitRes`` per node with that node's
  own ``num_examples`` and scalar metrics, and ``parameters`` = the unmasked weighted *mean*
  (the same for all). The pool turns them into one ``ClientUpdate`` per node, each carrying that
  mean -- as the workflow itself does -- so ``server_round`` and the strategy run unchanged: a
  weighted mean of identical copies is the copy. Strategies whose aggregation needs more than
  the mean are refused by the configuration (``registry.STRATEGIES[...].secagg``).
* **Node** (:func:`secure_mod` around the ClientApp, :func:`fit_reply`): the train request runs
  :func:`fedsynth.fed.client.client_round` as usual; the reply is a legacy ``FitRes`` whose
  parameters are the node's *change* of the travelling weights (``encode``). ``secaggplus_mod``
  then scales it by ``num_examples / max_weight``, clips it to ``[-clip, clip]``, quantises it to
  ``[0, 2^22)``, adds the pairwise and private masks modulo ``2^32``, sends only the masked
  vector and empties every ArrayRecord of the reply.

Why changes and not weights: a change is small, so the clipping range holds it; BatchNorm's
integer ``num_batches_tracked`` grows without bound and travels divided by :data:`INT_SCALE`.
A change that would be clipped (or is not finite) is refused by its node with an error naming
the key -- clipping would silently change the result; the protocol then treats the node as
dropped out.

Quantisation error (Flower's stochastic rounding, step ``2 clip / 2^22`` per node): at most
:func:`quantisation_bound` per weight against plain FedAvg. Flower draws the rounding from
NumPy's global generator; each node seeds it from the run seed first (``secagg-seed``).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.server.strategy import Strategy

from ...serial import to_bytes
from .records import named_arrays

#: Flower's quantisation range (``SecAggPlusWorkflow`` default): each value becomes an integer in [0, 2^22)
QUANTIZATION_RANGE = 2 ** 22
#: Flower's mask modulus (default): masked values are uniform in [0, 2^32)
MODULUS_RANGE = 2 ** 32
#: integer tensors (``num_batches_tracked``) travel divided by this, so a round's count fits the clipping range
INT_SCALE = 1024.0
#: every sampled node shares its secrets with every other (SecAgg+ with a complete graph)
NUM_SHARES = 1.0
#: shares needed to rebuild a node's secret: more than half (a server that lies about who dropped out
#: cannot get both secrets of one node); tolerates a third of the round's nodes dropping out mid-round
RECONSTRUCTION_THRESHOLD = 2 / 3


# ---------------------------------------------------------------- the vector (node and server)

def scales(dtypes: dict[str, str]) -> dict[str, float]:
    """Per key: 1 for floating tensors, :data:`INT_SCALE` for integer ones."""
    return {k: 1.0 if np.dtype(d).kind == "f" else INT_SCALE for k, d in dtypes.items()}


def encode(trained: dict[str, np.ndarray], start: dict[str, np.ndarray], keys: list[str],
           scale: dict[str, float]) -> list[np.ndarray]:
    """The vector a node contributes: ``(trained - start) / scale`` per key, in ``keys`` order
    (float64; 0-d tensors as shape (1,): flwr 1.42's unmask stage dequantises a 0-d array to a
    NumPy scalar, and its in-place ``vec += offset; vec *= 1 / total`` then never reaches it)."""
    missing = [k for k in keys if k not in trained]
    if missing or len(trained) != len(keys):
        raise ValueError(f"the update does not hold exactly the travelling weights (missing e.g. {missing[:1]})")
    return [np.atleast_1d((np.asarray(trained[k], np.float64) - np.asarray(start[k], np.float64)) / scale[k])
            for k in keys]


def decode(vector: list[np.ndarray], start: dict[str, np.ndarray], keys: list[str],
           scale: dict[str, float]) -> dict[str, np.ndarray]:
    """The mean weights from the unmasked mean change: ``start + scale * change``, in each
    weight's dtype (integers rounded). ``ValueError`` if the vector does not fit ``keys``."""
    if len(vector) != len(keys):
        raise ValueError(f"the aggregate holds {len(vector)} tensors, the travelling weights are {len(keys)}")
    out = {}
    for k, v in zip(keys, vector):
        s = np.asarray(start[k])
        if s.ndim == 0 and v.shape == (1,):  # sent as shape (1,) (see encode)
            v = v.reshape(())
        if v.shape != s.shape or not np.all(np.isfinite(v)):
            raise ValueError(f"the aggregate of '{k}' has shape {v.shape} (expected {s.shape}) or is not finite")
        m = s.astype(np.float64) + scale[k] * v
        out[k] = (np.rint(m) if s.dtype.kind != "f" else m).astype(s.dtype)
    return out


def mod_ratio(weight: int, max_weight: float) -> float:
    """The weight factor ``secaggplus_mod`` applies (its own rounding to the quantisation grid)."""
    return round(weight / max_weight * QUANTIZATION_RANGE) / QUANTIZATION_RANGE


def check_range(vector: list[np.ndarray], keys: list[str], weight: int, max_weight: float, clip: float) -> None:
    """Refuse what ``secaggplus_mod`` would clip or cannot quantise (``ValueError`` naming the key)."""
    r = mod_ratio(weight, max_weight)
    for k, v in zip(keys, vector):
        if not np.all(np.isfinite(v)):
            raise ValueError(f"the change of '{k}' is not finite")
        big = float(np.max(np.abs(v))) * r if v.size else 0.0
        if big > clip:
            raise ValueError(f"the change of '{k}' ({big:.4g} after weighting) exceeds the secure-aggregation "
                             f"clipping range {clip:g} (fed.secagg-clipping-range)")


def quantisation_bound(weights: list[int], max_weight: float, clip: float) -> float:
    """Largest difference, per (float, unscaled) weight, between the secure mean and the exact
    weighted mean of the same updates.

    Two sources: each node's stochastic rounding moves its weighted change by less than one step
    ``2 clip / 2^22`` and the server divides the sum by the sum of the weight factors; and the
    factors themselves are rounded to multiples of 2^-22 (relative error ``e_i``), which moves a
    mean of changes bounded by ``clip / r_i`` by at most ``2 max|e| / (1 - max|e|) * clip / min r``
    (zero when every node has the same weight)."""
    step = 2 * clip / QUANTIZATION_RANGE
    exact = [w / max_weight for w in weights]
    rounded = [mod_ratio(w, max_weight) for w in weights]
    e = max(abs(q / r - 1) for q, r in zip(rounded, exact))
    return len(weights) * step / sum(rounded) + 2 * e / (1 - e) * clip / min(exact)


# ---------------------------------------------------------------- node side

def is_secure(msg: Message) -> bool:
    """A SecAgg+ message (every stage's carries the protocol's config record)."""
    return msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records


def secure_mod(msg: Message, context: Context, call_next) -> Message:
    """``secaggplus_mod`` for SecAgg+ messages only; fedsynth's other messages pass untouched."""
    if is_secure(msg):
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def train_request(content: RecordDict) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(config, global weights, strategy arrays)`` from the FitIns of a secure round."""
    fitins = compat.recorddict_to_fitins(content, keep_input=True)
    conf = dict(fitins.config)
    names = json.loads(str(conf.pop("weight-keys")))
    arrays = parameters_to_ndarrays(fitins.parameters)  # np.load(allow_pickle=False)
    if len(arrays) != len(names):
        raise ValueError(f"the server sent {len(arrays)} tensors for {len(names)} weight names")
    strategy: dict[str, np.ndarray] = {}  # the strategy's tensors (its structure is in the config's 'strategy')
    if "strategy-arrays" in conf:
        strategy = named_arrays(bytes(conf.pop("strategy-arrays")), "the server's strategy tensors")
    return conf, dict(zip(names, arrays)), strategy


def fit_reply(msg: Message, conf: dict[str, Any], start: dict[str, np.ndarray], res: dict[str, Any]) -> Message:
    """The node's answer in the form ``secaggplus_mod`` masks: a FitRes whose parameters are the
    node's change of the travelling weights and whose ``num_examples`` is its aggregation weight;
    the node's records, timing and losses ride along as scalar metrics."""
    meta = res["meta"]
    if "error" in meta:
        raise RuntimeError(f"site {meta.get('client-id', '?')}: {meta['error']}")
    if meta.get("dropped") or res.get("arrays") is None:
        raise RuntimeError(f"site {meta.get('client-id', '?')} dropped out mid-round")
    if res.get("extra"):
        raise RuntimeError("this strategy sends tensors besides the weights; secure aggregation cannot carry them")
    keys = json.loads(str(conf["secagg-keys"]))
    scale = dict(zip(keys, json.loads(str(conf["secagg-scales"]))))
    metrics = res["metrics"]
    weight = int(metrics["num-examples"]) if bool(conf["secagg-weighted"]) else 1
    max_weight, clip = float(conf["secagg-max-weight"]), float(conf["secagg-clipping-range"])
    vector = encode(res["arrays"], start, keys, scale)
    check_range(vector, keys, weight, max_weight, clip)
    out: dict[str, Any] = {"client-id": str(meta["client-id"]), "timing": str(meta["timing"]),
                           "records": str(meta.get("records", "[]")), "warm": bool(meta.get("warm", False))}
    out.update({k: (int(v) if k in ("num-examples", "steps") else float(v)) for k, v in metrics.items()})
    # Flower's stochastic rounding draws from NumPy's global generator: seed it from the run seed
    np.random.seed(int(conf["secagg-seed"]) % 2 ** 32)
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(vector), weight, out)
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


# ---------------------------------------------------------------- server side

class Relay(Strategy):
    """The legacy strategy ``SecAggPlusWorkflow`` drives: hands out fedsynth's prepared train
    requests and keeps what the workflow aggregated. Nothing else (no evaluation, no sampling:
    fedsynth's loop did that)."""

    def __init__(self, instructions: list):
        self.instructions = instructions  # [(ClientProxy, FitIns)]
        self.results: list[tuple[Any, FitRes]] = []
        self.failures: list = []

    def initialize_parameters(self, client_manager):
        return None

    def configure_fit(self, server_round, parameters, client_manager):
        return self.instructions

    def aggregate_fit(self, server_round, results, failures):
        self.results, self.failures = list(results), list(failures)
        return (results[0][1].parameters if results else None), {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


def fit_instructions(config: dict[str, Any], weights: dict[str, np.ndarray],
                     strategy: dict[str, np.ndarray]) -> FitIns:
    """A node's FitIns: the global weights as legacy Parameters (names in ``weight-keys``), the
    strategy's tensors as one :mod:`fedsynth.serial` payload (a FitIns config holds scalars and
    bytes, not lists)."""
    conf = {**config, "weight-keys": json.dumps(list(weights))}
    if strategy:
        conf["strategy-arrays"] = to_bytes(dict(strategy), root="strategy")
    return FitIns(ndarrays_to_parameters(list(weights.values())), conf)


def run_secure_round(grid, round_: int, instructions: dict[int, FitIns], max_weight: float, clip: float,
                     timeout: float) -> Relay:
    """One SecAgg+ round over ``grid`` (Flower's workflow, unchanged): the returned relay holds
    the per-node FitRes with the unmasked mean (empty if the protocol halted)."""
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey
    run_id = grid.run.run_id
    relay = Relay([(GridClientProxy(nid, grid, run_id), ins) for nid, ins in instructions.items()])
    ctx = LegacyContext(Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                        strategy=relay)
    ctx.state[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: round_})
    ctx.state[MAIN_PARAMS_RECORD] = ArrayRecord()  # the relay's configure_fit carries the weights
    SecAggPlusWorkflow(NUM_SHARES, RECONSTRUCTION_THRESHOLD, max_weight=max_weight, clipping_range=clip,
                       quantization_range=QUANTIZATION_RANGE, modulus_range=MODULUS_RANGE,
                       timeout=timeout)(grid, ctx)
    return relay
