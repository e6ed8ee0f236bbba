import random

import pytest
import torch

from fedsynth.fed import ClientUpdate, FedAvg, weighted_average


def test_weighted_average_hand_computed():
    a = {"w": torch.tensor([1.0, 2.0]), "bn.num_batches_tracked": torch.tensor(10)}
    b = {"w": torch.tensor([3.0, 6.0]), "bn.num_batches_tracked": torch.tensor(20)}
    out = weighted_average([a, b], [1, 3])
    # (1*[1,2] + 3*[3,6]) / 4 = [2.5, 5.0];  (10 + 60) / 4 = 17.5 -> 18 (rounded, stays integer)
    assert torch.equal(out["w"], torch.tensor([2.5, 5.0]))
    assert out["bn.num_batches_tracked"].dtype == torch.int64
    assert out["bn.num_batches_tracked"].item() == 18


def test_fedavg_weights_by_sample_count_or_not():
    ups = [ClientUpdate("a", {"w": torch.tensor([0.0])}, 100),
           ClientUpdate("b", {"w": torch.tensor([1.0])}, 300)]
    assert FedAvg(weighted=True).aggregate({}, ups)["w"].item() == pytest.approx(0.75)
    assert FedAvg(weighted=False).aggregate({}, ups)["w"].item() == pytest.approx(0.5)


def _random_updates(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [ClientUpdate(f"c{k}", {"G.w": torch.randn(5, 3, generator=g),
                                   "D.bn.running_var": torch.rand(4, generator=g),
                                   "D.bn.num_batches_tracked": torch.tensor(k * 7)},
                         num_examples=10 + 13 * k) for k in range(n)]


def test_client_order_does_not_matter_bitwise():
    ups = _random_updates(6)
    ref = FedAvg().aggregate({}, ups)
    for s in range(5):
        shuffled = ups[:]
        random.Random(s).shuffle(shuffled)
        out = FedAvg().aggregate({}, shuffled)
        assert all(torch.equal(ref[k], out[k]) for k in ref)


def test_one_client_is_identity():
    (u,) = _random_updates(1, seed=3)
    out = FedAvg().aggregate({}, [u])
    for k, v in u.weights.items():
        assert torch.equal(out[k], v) and out[k].dtype == v.dtype


def test_identical_clients_give_that_client():
    (u,) = _random_updates(1, seed=4)
    ups = [ClientUpdate(f"c{k}", u.weights, 5 + k) for k in range(4)]
    out = FedAvg().aggregate({}, ups)
    assert all(torch.allclose(out[k], u.weights[k], atol=1e-7, rtol=0) for k in out)


def test_mismatched_keys_are_an_error():
    with pytest.raises(ValueError, match="different keys"):
        weighted_average([{"a": torch.zeros(1)}, {"b": torch.zeros(1)}], [1, 1])
