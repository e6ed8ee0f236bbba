"""What a run releases, decided in one place.

A strategy declares it (:attr:`fedsynth.fed.strategies.Strategy.release`):

``"global"``
    one model for every site: the aggregated weights, or their EMA where ``fed.ema`` keeps one
    (FedAvg and every strategy that aggregates).
``"mixture"``
    the mixture of the sites' own models, each drawing in proportion to its images
    (``ensemble``): scored as the run's one generator, drawn one block of rows per site.
``"own"``
    each site's own model, no global one (``local``): each is scored against the union.

:class:`Release` turns that into what the loop, the pools and the reporter ask -- which weights
are scored and drawn as the run's model, what the rounds' scores are called -- so
none of them checks a strategy's name or whether a global model happens to exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..updates import State

GLOBAL, MIXTURE, OWN = "global", "mixture", "own"
KINDS = (GLOBAL, MIXTURE, OWN)


@dataclass(frozen=True)
class Release:
    """What a run releases: ``kind`` is one of :data:`KINDS` (see the module docstring)."""

    kind: str = GLOBAL

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"release {self.kind!r}: one of {', '.join(KINDS)}")

    @classmethod
    def of(cls, strategy: Any) -> "Release":
        """What ``strategy`` (or a wrapper around it) releases."""
        return cls(strategy.release)

    @property
    def one_model(self) -> bool:
        """One set of weights is the run's model: its grid, its realism extremes, its score on
        each site. Otherwise the sites' own models are, one block of grid rows each."""
        return self.kind == GLOBAL

    @property
    def scores(self) -> str:
        """The rounds' Frechet distances, as :class:`fedsynth.fed.engine.RunPlan` names them:
        ``"global"`` (one generator -- a model or the mixture -- against the union) or ``"local"``
        (each site's own model against the union)."""
        return "local" if self.kind == OWN else "global"

    def model(self, server: Any) -> State | None:
        """The released weights where one model is released (its EMA if the run keeps one:
        :attr:`fedsynth.fed.server.ServerState.released`), else None."""
        return server.released if self.one_model else None
