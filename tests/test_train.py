import torch

from fedsynth.data import make_phantom
from fedsynth.models import build_gan
from fedsynth.train import LocalTrainer, NonSaturatingBCE, build_loss, steps_per_epoch


def _trainer(seed=0):
    gan = build_gan("dcgan", 16, 1, nz=8, ngf=4, ndf=4, seed=seed)
    return LocalTrainer(gan, build_loss("bce"))


def test_bce_loss_values_at_zero_logits():
    class Zero(torch.nn.Module):
        def forward(self, x, y=None):
            return torch.zeros(len(x))
    loss = NonSaturatingBCE()
    x = torch.zeros(4, 1, 2, 2)
    ln2 = torch.log(torch.tensor(2.0))
    assert torch.isclose(loss.d_loss(Zero(), x, x), 2 * ln2)
    assert torch.isclose(loss.g_loss(Zero(), x), ln2)


def test_local_training_changes_weights_and_is_reproducible():
    data = make_phantom("phantom-xray", 40, 16, seed=0)
    t = _trainer()
    w0 = t.weights()
    results, finals = [], []
    for _ in range(2):
        t.load(w0, None)
        results.append(t.train(data, steps=5, batch_size=8, generator=torch.Generator().manual_seed(1)))
        finals.append(t.weights())
    r = results[0]
    assert r.steps == 5 and r.images == 40 and torch.isfinite(torch.tensor([r.d_loss, r.g_loss])).all()
    assert not torch.equal(w0["G.net.0.weight"], finals[0]["G.net.0.weight"])
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in w0)
    assert results[0].d_loss == results[1].d_loss


def test_optimizer_state_persists_or_resets():
    data = make_phantom("phantom-xray", 40, 16, seed=0)
    t = _trainer()
    t.load(t.weights(), None)
    t.train(data, 3, 8, torch.Generator().manual_seed(0))
    state = t.opt_state()
    step_of = lambda s: int(next(iter(s["G"]["state"].values()))["step"])  # noqa: E731
    assert step_of(state) == 3
    t.load(t.weights(), state)              # a client's state carried into the next round
    t.train(data, 2, 8, torch.Generator().manual_seed(0))
    assert step_of(t.opt_state()) == 5
    assert step_of(state) == 3              # the saved copy did not alias the live optimizer
    t.load(t.weights(), None)               # reset
    assert t.opt_state()["G"]["state"] == {}


def test_steps_per_epoch():
    assert steps_per_epoch(100, 32) == 3
    assert steps_per_epoch(10, 32) == 1
