"""Aggregation strategies: pure functions over state dicts, wrapped in small classes.

A strategy never sees images. It gets the current global weights and a list of
:class:`ClientUpdate` (the weights a client shares, its sample count, its local step count,
scalar metrics, and -- for SCAFFOLD -- its control-variate change) and returns new global
weights. Strategies that change local training (FedProx, SCAFFOLD, FedDyn) hand the loop
*hooks* that modify gradients; the loop itself never changes.

Only *parameters* are ever fed to a server optimiser or a correction term. BatchNorm running
statistics are averaged, and ``num_batches_tracked`` stays an integer.

References: FedAvg (McMahan et al. 2017), FedProx (Li et al. 2020, arXiv:1812.06127),
FedNova (Wang et al. 2020, arXiv:2007.07481), SCAFFOLD (Karimireddy et al. 2020,
arXiv:1910.06378), FedDyn (Acar et al. 2021, arXiv:2111.04263), FedAvgM (Hsu et al. 2019),
FedAdam/FedYogi (Reddi et al. 2021, arXiv:2003.00295), FedBN (Li et al. 2021,
arXiv:2102.07623), cyclic/single weight transfer (Chang et al. 2018).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from ..registry import STRATEGIES as STRATEGY_NAMES
from ..updates import Average, ClientUpdate, State, by_client, shared_keys, weighted_average

__all__ = ["ClientUpdate", "State", "shared_keys", "weighted_average", "Strategy", "build_strategy", "STRATEGIES"]

_sorted = by_client


class Near:
    """Tensors of a (CPU) state as a hook meets them: on the device of the parameter, moved once
    per round and key. On the CPU they are the state's own tensors."""

    def __init__(self, state: State):
        self.state, self.moved = state, {}

    def __call__(self, key: str, p: torch.Tensor) -> torch.Tensor:
        t = self.state[key]
        if t.device == p.device:
            return t
        if key not in self.moved:
            self.moved[key] = t.to(p.device)
        return self.moved[key]


class GradHook:
    """A gradient hook for one client in one round: ``grad += f(key, param)`` for each
    parameter in ``keys`` (the parameters that travel: a discriminator kept local under
    partial sharing gets no correction)."""

    def __init__(self, fn, keys: set[str]):
        self.fn, self.keys = fn, keys

    def after_backward(self, net: str, module: torch.nn.Module) -> None:
        with torch.no_grad():
            for name, p in module.named_parameters():
                key = f"{net}.{name}"
                if p.grad is not None and key in self.keys:
                    p.grad.add_(self.fn(key, p))


class Strategy:
    """Base class.

    Attributes
    ----------
    aggregates : bool
        False for strategies where clients keep their own models (``local``, ``ensemble``).
    release : str
        What the run releases (:mod:`fedsynth.fed.release`): ``"global"`` (the aggregated model;
        every strategy that aggregates), ``"own"`` (each site's own model: ``local``) or
        ``"mixture"`` (the mixture of the sites' models: ``ensemble``).
    sequential : bool
        Clients train one after another, each from the previous one's weights (SWT/CWT).
    local_steps : int | None
        Forces this many local steps per round (FedSGD: 1).
    """

    name = "base"
    pools_data = False
    aggregates = True
    release = "global"
    sequential = False
    local_steps: int | None = None
    keeps_norm_local = False

    def __init__(self, weighted: bool = True):
        self.weighted = weighted
        self.param_keys: set[str] = set()
        self.num_clients = 1

    @classmethod
    def from_config(cls, fed: Any) -> "Strategy":
        """An instance from the ``[fed]`` section (each subclass takes the keys it uses)."""
        return cls(weighted=fed.weighted)

    def setup(self, global_state: State, param_keys: set[str], num_clients: int) -> None:
        """Called once by the engine: which keys are parameters, how many clients exist."""
        self.param_keys = set(param_keys)
        self.num_clients = num_clients

    def attach(self, cfg: Any, model: Any) -> None:
        """Called once by the engine with the run's configuration and this process's model
        workspace (FedCAR samples the sites' generators with it on the server); most ignore it."""

    # ---- client side
    def client_hooks(self, client_state: dict[str, Any], global_state: State, round_: int = 0) -> list:
        """Hooks for client training in round ``round_`` (:class:`fedsynth.train.TrainHook`)."""
        return []

    def after_local(self, client_state: dict[str, Any], global_state: State, new_state: State,
                    steps: int, lrs) -> State:
        """Update the client's strategy state; returns extra tensors to send (SCAFFOLD).
        ``lrs[key]`` is the learning rate the model family trains parameter ``key`` with."""
        return {}

    def next_start(self, start: State, update: ClientUpdate) -> State:
        """Where the next client of the same round starts: the global weights (every strategy
        but the sequential ones, whose next client continues from this one)."""
        return {**start, **update.weights} if self.sequential else start

    # ---- server side
    def _weights(self, updates: Sequence[ClientUpdate]) -> list[float]:
        return [u.num_examples if self.weighted else 1.0 for u in updates]

    def _mean(self, global_state: State, updates: Sequence[ClientUpdate]) -> State:
        ups = _sorted(updates)
        return weighted_average([u.weights for u in ups], self._weights(ups))

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate], rng: torch.Generator | None = None,
                  average: Average | None = None) -> State:
        """New global weights. ``average`` replaces the (weighted) mean the strategy builds on:
        a robust rule or client-level DP (:mod:`fedsynth.privacy`); ``rng`` is the round's
        generator for anything random."""
        if not updates:
            return global_state
        new = dict(global_state)
        new.update((average or self._mean)(global_state, _sorted(updates)))
        return new

    def round_records(self, round_: int, sample_rate: float) -> list[dict[str, Any]]:
        """Records after an aggregation (privacy wrappers report epsilon here)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class FedAvg(Strategy):
    """Federated averaging over every shared parameter and buffer, weighted by sample count
    (or unweighted). Updates are sorted by client id before summation, so the result is
    bit-identical whatever order they arrive in."""

    name = "fedavg"


class FedSGD(FedAvg):
    """FedAvg with exactly one local step per round."""

    name = "fedsgd"
    local_steps = 1


class FedProx(FedAvg):
    """FedAvg whose clients minimise ``loss + mu/2 ||w - w_global||^2``: the gradient gains
    ``mu (w - w_global)``."""

    name = "fedprox"

    def __init__(self, mu: float = 0.01, **kw):
        super().__init__(**kw)
        self.mu = mu

    @classmethod
    def from_config(cls, fed):
        return cls(fed.mu, weighted=fed.weighted)

    def client_hooks(self, client_state, global_state, round_=0):
        mu, g = self.mu, Near(global_state)
        return [GradHook(lambda k, p: mu * (p - g(k, p)), self.param_keys)]


class FedNova(FedAvg):
    """Normalised averaging: ``w = w_g - tau_eff * sum_i p_i (w_g - w_i) / tau_i`` with
    ``tau_eff = sum_i p_i tau_i`` (tau: local steps), removing the bias towards clients that
    take more local steps. Buffers are averaged."""

    name = "fednova"

    def aggregate(self, global_state, updates, rng=None, average=None):
        if not updates:
            return global_state
        ups = _sorted(updates)
        w = torch.tensor(self._weights(ups), dtype=torch.float64)
        p = w / w.sum()
        tau = torch.tensor([float(u.steps) for u in ups], dtype=torch.float64)
        tau_eff = float((p * tau).sum())
        new = dict(global_state)
        new.update(weighted_average([u.weights for u in ups], self._weights(ups)))
        for k in ups[0].weights:
            if k not in self.param_keys:
                continue
            g = global_state[k].to(torch.float64)
            d = sum(pi * (g - u.weights[k].to(torch.float64)) / ti for pi, ti, u in zip(p.tolist(), tau.tolist(), ups))
            new[k] = (g - tau_eff * d).to(global_state[k].dtype)
        return new


class Scaffold(FedAvg):
    """SCAFFOLD: client gradients are corrected by ``c - c_i``; after K local steps with step
    size lr the client sets ``c_i+ = c_i - c + (w_g - w_i) / (K lr)`` and sends ``c_i+ - c_i``;
    the server adds ``|S| / N * mean(delta c_i)`` to ``c`` (option II of the paper)."""

    name = "scaffold"

    def setup(self, global_state, param_keys, num_clients):
        super().setup(global_state, param_keys, num_clients)
        self.c = {k: torch.zeros_like(global_state[k]) for k in self.param_keys}

    def _ci(self, client_state):
        return client_state.setdefault("scaffold_c", {k: torch.zeros_like(v) for k, v in self.c.items()})

    def client_hooks(self, client_state, global_state, round_=0):
        c, ci = Near(self.c), Near(self._ci(client_state))
        return [GradHook(lambda k, p: c(k, p) - ci(k, p), self.param_keys)]

    def after_local(self, client_state, global_state, new_state, steps, lrs):
        ci = self._ci(client_state)
        delta = {}
        for k in self.param_keys:
            lr = lrs[k]
            new_ci = ci[k] - self.c[k] + (global_state[k] - new_state[k]) / (max(steps, 1) * lr)
            delta[k] = new_ci - ci[k]
            ci[k] = new_ci
        return delta

    def aggregate(self, global_state, updates, rng=None, average=None):
        new = super().aggregate(global_state, updates, rng, average)
        if updates:
            frac = len(updates) / self.num_clients
            for k in self.c:
                self.c[k] = self.c[k] + frac * sum(u.extra[k] for u in updates) / len(updates)
        return new

    def state_dict(self):
        return {"c": self.c}

    def load_state_dict(self, state):
        self.c = state["c"]


class FedDyn(FedAvg):
    """FedDyn: clients minimise ``L_i(w) - <g_i, w> + alpha/2 ||w - w_g||^2`` and update
    ``g_i -= alpha (w_i - w_g)``; the server keeps ``h -= alpha / N * sum_i (w_i - w_g)`` and sets
    ``w = mean(w_i) - h / alpha`` (parameters; buffers are averaged)."""

    name = "feddyn"

    def __init__(self, alpha: float = 0.01, **kw):
        super().__init__(**kw)
        self.alpha = alpha

    @classmethod
    def from_config(cls, fed):
        return cls(fed.dyn_alpha, weighted=fed.weighted)

    def setup(self, global_state, param_keys, num_clients):
        super().setup(global_state, param_keys, num_clients)
        self.h = {k: torch.zeros_like(global_state[k]) for k in self.param_keys}

    def _gi(self, client_state):
        return client_state.setdefault("feddyn_g", {k: torch.zeros_like(v) for k, v in self.h.items()})

    def client_hooks(self, client_state, global_state, round_=0):
        a, gi, g = self.alpha, Near(self._gi(client_state)), Near(global_state)
        return [GradHook(lambda k, p: -gi(k, p) + a * (p - g(k, p)), self.param_keys)]

    def after_local(self, client_state, global_state, new_state, steps, lrs):
        gi = self._gi(client_state)
        for k in self.param_keys:
            gi[k] = gi[k] - self.alpha * (new_state[k] - global_state[k])
        return {}

    def aggregate(self, global_state, updates, rng=None, average=None):
        if not updates:
            return global_state
        new = super().aggregate(global_state, updates, rng, average)
        for k in self.param_keys:
            drift = sum(u.weights[k] - global_state[k] for u in updates)
            self.h[k] = self.h[k] - self.alpha / self.num_clients * drift
            new[k] = new[k] - self.h[k] / self.alpha
        return new

    def state_dict(self):
        return {"h": self.h}

    def load_state_dict(self, state):
        self.h = state["h"]


class ServerOpt(FedAvg):
    """FedOpt family (Reddi et al. 2021, arXiv:2003.00295, Algorithm 2): the averaged update
    ``delta = mean(w_i) - w_g`` (parameters only) is a pseudo-gradient for a server optimiser;
    buffers are plainly averaged.

    Parameters
    ----------
    lr : float
        Server learning rate; 0 picks the class's ``default_lr`` (FedAvgM 0.3, FedAdam/FedYogi
        1e-2: chosen by the server-learning-rate sweep in docs/results.md).
    momentum : float
        FedAvgM's server momentum (default 0.9).
    beta1, beta2, tau : float
        FedAdam/FedYogi moment decays (0.9, 0.99) and adaptivity (1e-3), as in the paper and Flower.
    bias_correction : bool
        FedAdam/FedYogi (default True): scale the step by ``sqrt(1 - beta2^t) / (1 - beta1^t)``
        at the t-th server step (Kingma & Ba 2015, arXiv:1412.6980), so that each weight moves
        by about ``lr`` from the first round on. The paper's Algorithm 2 has none; Flower's
        FedAdam has it (with ``t`` one ahead), its FedYogi not. Ignored by FedAvgM.
    decay, floor, rounds : str, float, int
        The learning rate's schedule over ``rounds`` server steps (``fed.server-lr-decay``):
        ``"none"`` keeps ``lr``; ``"cosine"`` (Loshchilov & Hutter 2017, arXiv:1608.03983, one
        cycle without restarts) and ``"linear"`` go from ``lr`` at the first step to
        ``lr * floor`` at step ``rounds``, and stay there. A constant Adam-type server step moves
        every weight by about ``lr`` each round however small and contradictory the sites'
        updates have become; decaying it lets late rounds settle.
    """

    default_lr = 1.0

    def __init__(self, lr: float = 0.0, momentum: float = 0.9, beta1: float = 0.9, beta2: float = 0.99,
                 tau: float = 1e-3, bias_correction: bool = True, decay: str = "none", floor: float = 0.1,
                 rounds: int = 1, **kw):
        super().__init__(**kw)
        self.lr = lr or self.default_lr
        self.momentum, self.beta1, self.beta2, self.tau = momentum, beta1, beta2, tau
        self.bias_correction = bias_correction
        if decay not in ("none", "cosine", "linear"):
            raise ValueError(f"server learning-rate decay must be none, cosine or linear, not {decay!r}")
        self.decay, self.floor, self.rounds = decay, floor, max(1, rounds)
        self.m: State = {}
        self.v: State = {}
        self.t = 0   # server steps taken (rounds that aggregated something)

    @classmethod
    def from_config(cls, fed):
        return cls(fed.server_lr, fed.server_momentum, fed.server_beta1, fed.server_beta2, fed.server_tau,
                   bias_correction=fed.server_bias_correction, decay=fed.server_lr_decay,
                   floor=fed.server_lr_floor, rounds=fed.rounds, weighted=fed.weighted)

    def schedule(self, t: int | None = None) -> float:
        """The learning rate's factor at server step ``t`` (1-based; default: the current step)."""
        t = self.t if t is None else t
        if self.decay == "none" or self.rounds == 1:
            return 1.0
        p = min(1.0, max(0.0, (t - 1) / (self.rounds - 1)))
        if self.decay == "linear":
            return 1.0 - (1.0 - self.floor) * p
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * p))

    def round_records(self, round_, sample_rate):
        """The server learning rate this round's step used (a decaying schedule only)."""
        if self.decay == "none" or self.t == 0:
            return super().round_records(round_, sample_rate)
        return [*super().round_records(round_, sample_rate),
                {"round": round_, "client": "server", "metric": "server-lr", "value": self.lr * self.schedule()}]

    def step(self, k: str, delta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def aggregate(self, global_state, updates, rng=None, average=None):
        if not updates:
            return global_state
        avg = super().aggregate(global_state, updates, rng, average)
        new = dict(avg)
        self.t += 1
        for k in sorted(self.param_keys & set(updates[0].weights)):
            delta = avg[k].to(torch.float64) - global_state[k].to(torch.float64)
            new[k] = (global_state[k].to(torch.float64) + self.step(k, delta)).to(global_state[k].dtype)
        return new

    def state_dict(self):
        return {"m": self.m, "v": self.v, "t": self.t}

    def load_state_dict(self, state):
        self.m, self.v = state["m"], state["v"]
        self.t = int(state.get("t", 0))  # checkpoints from before the counter: never bias-corrected


class FedAvgM(ServerOpt):
    """Server momentum (Hsu et al. 2019, arXiv:1909.06335): ``v = beta v + delta; w = w_g + lr v``.
    With constant updates the step tends to ``lr / (1 - beta)`` times the FedAvg step: 3x with
    the defaults (lr 0.3, beta 0.9); Flower's lr 1.0 with beta 0.9 (10x) diverged in the sweep."""

    name = "fedavgm"
    default_lr = 0.3

    def step(self, k, delta):
        self.m[k] = self.momentum * self.m.get(k, torch.zeros_like(delta)) + delta
        return self.lr * self.schedule() * self.m[k]


class FedAdam(ServerOpt):
    """``m = b1 m + (1-b1) d; v = b2 v + (1-b2) d^2; w = w_g + lr_t m / (sqrt(v) + tau)`` with
    ``lr_t = lr`` or, with bias correction, ``lr sqrt(1 - b2^t) / (1 - b1^t)``.

    Each weight moves by about ``lr`` per round whatever the size of its update, so ``lr`` must be
    on the scale of what one round of local training moves a weight (see docs/results.md)."""

    name = "fedadam"
    default_lr = 1e-2

    def _v(self, k, d2):
        return self.beta2 * self.v[k] + (1 - self.beta2) * d2

    def lr_t(self) -> float:
        """The step size of server step ``self.t`` (1-based)."""
        lr = self.lr * self.schedule()
        if not self.bias_correction:
            return lr
        return lr * (1 - self.beta2 ** self.t) ** 0.5 / (1 - self.beta1 ** self.t)

    def step(self, k, delta):
        z = torch.zeros_like(delta)
        self.m[k] = self.beta1 * self.m.get(k, z) + (1 - self.beta1) * delta
        self.v.setdefault(k, z.clone())
        self.v[k] = self._v(k, delta * delta)
        return self.lr_t() * self.m[k] / (self.v[k].sqrt() + self.tau)


class FedYogi(FedAdam):
    """As FedAdam with Yogi's additive second moment: ``v -= (1-b2) d^2 sign(v - d^2)``."""

    name = "fedyogi"

    def _v(self, k, d2):
        return self.v[k] - (1 - self.beta2) * d2 * torch.sign(self.v[k] - d2)


class FedBN(FedAvg):
    """FedAvg with every normalisation layer kept local to its client."""

    name = "fedbn"
    keeps_norm_local = True


class FreezeNormStats:
    """A training hook that puts every BatchNorm layer of the network in evaluation mode: it
    normalises with its running statistics, which no longer change; its scale and shift train."""

    def after_backward(self, net: str, module: torch.nn.Module) -> None:
        pass

    def before_training(self, net: str, module: torch.nn.Module) -> None:
        for m in module.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)):
                m.eval()


class FixBN(FedAvg):
    """FixBN (Zhong et al. 2024, "Making Batch Normalization Great in Federated Deep Learning",
    arXiv:2303.06530): FedAvg with ordinary BatchNorm for the first ``fix_round`` rounds, whose
    running statistics are aggregated like any buffer; from round ``fix_round + 1`` on every
    BatchNorm layer normalises with those aggregated statistics, frozen, in training as in
    evaluation. Under label skew each site's batch statistics describe its own class mix, so a
    model trained on them and evaluated with the averaged running statistics sees two different
    normalisations; frozen global statistics remove that mismatch once they have settled."""

    name = "fixbn"

    def __init__(self, fix_round: int = 5, **kw):
        super().__init__(**kw)
        self.fix_round = fix_round

    @classmethod
    def from_config(cls, fed):
        return cls(fix_round=fed.fixbn_round, weighted=fed.weighted)

    def client_hooks(self, client_state, global_state, round_=0):
        return [FreezeNormStats()] if round_ > self.fix_round else []


class SequentialTransfer(FedAvg):
    """``cwt``: each round visits every sampled client in turn, each starting from the
    previous one's weights; ``swt``: the rounds are split into one block per client, so each
    client is visited once (single weight transfer). The global model is the last client's."""

    sequential = True

    def __init__(self, cyclic: bool, **kw):
        super().__init__(**kw)
        self.cyclic = cyclic
        self.name = "cwt" if cyclic else "swt"

    def aggregate(self, global_state, updates, rng=None, average=None):
        if not updates:
            return global_state
        new = dict(global_state)
        new.update(updates[-1].weights)  # the last client in visiting order
        return new


class Local(Strategy):
    """Baseline: every client trains alone and never aggregates."""

    name = "local"
    aggregates = False
    release = "own"

    def aggregate(self, global_state, updates, rng=None, average=None):
        return global_state


class Ensemble(Local):
    """Clients train alone; the "global" generator samples from the mixture of the local
    generators (each weighted by its client's sample count)."""

    name = "ensemble"
    release = "mixture"


class SingleWeightTransfer(SequentialTransfer):
    def __init__(self, **kw):
        super().__init__(cyclic=False, **kw)


class CyclicWeightTransfer(SequentialTransfer):
    def __init__(self, **kw):
        super().__init__(cyclic=True, **kw)


class Centralized(FedAvg):
    """Baseline: FedAvg over a single client that holds all the data (the engine pools it)."""

    name = "centralized"
    pools_data = True


STRATEGIES = STRATEGY_NAMES.names()


def build_strategy(name: str, weighted: bool = True, mu: float = 0.01, dyn_alpha: float = 0.01,
                   server_lr: float = 0.0, momentum: float = 0.9, beta1: float = 0.9, beta2: float = 0.99,
                   tau: float = 1e-3, bias_correction: bool = True) -> Strategy:
    """The strategy registered as ``name`` (:data:`fedsynth.registry.STRATEGIES`) with these
    parameters (the ``[fed]`` keys of the same names; tests and scripts)."""
    from ..config import FedConfig
    return STRATEGY_NAMES.load(name).from_config(FedConfig(
        strategy=name, weighted=weighted, mu=mu, dyn_alpha=dyn_alpha, server_lr=server_lr, server_momentum=momentum,
        server_beta1=beta1, server_beta2=beta2, server_tau=tau, server_bias_correction=bias_correction))


def strategy_from_config(fed, privacy=None) -> Strategy:
    """The strategy the ``[fed]`` section names, wrapped by the ``[privacy]`` section's robust
    rule or client-level DP (:mod:`fedsynth.privacy`)."""
    s = STRATEGY_NAMES.load(fed.strategy).from_config(fed)
    if privacy is not None and privacy.robust != "none":
        from ..privacy.robust import RobustAggregation
        s = RobustAggregation(s, privacy.robust, privacy.trim, privacy.byzantine, privacy.clip_norm)
    if privacy is not None and privacy.client_dp:
        from ..privacy.dp import ClientLevelDP
        s = ClientLevelDP(s, privacy.client_dp_clip, privacy.client_dp_noise, privacy.dp_delta)
    return s
