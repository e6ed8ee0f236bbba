"""How much a client trains per round: one epoch, but at least ``fed.min-local-steps`` (a small
site repeats its data), and a notice before the rounds when that floor applies or when the
settings give too few steps to learn."""

from fedsynth.config import MIN_LOCAL_STEPS, load_config
from fedsynth.fed.client import local_steps, workload_notes
from fedsynth.fed.strategies import strategy_from_config


def _steps(*sets, n):
    cfg = load_config(None, list(sets))
    s = strategy_from_config(cfg.fed, cfg.privacy)
    return local_steps(cfg, s, n), workload_notes(cfg, s, {"0": n})


def test_the_default_run_is_not_floored():
    # built-in default: 2,000 phantoms over 2 sites, batch 32 -> 31 steps an epoch, above the floor
    steps, notes = _steps(n=1000)
    assert steps == 31 > MIN_LOCAL_STEPS and notes == []


def test_a_small_site_repeats_its_data_and_is_told():
    steps, notes = _steps(n=84)
    assert steps == MIN_LOCAL_STEPS == 30
    assert len(notes) == 1 and "site 0: 84 images at batch 32 is 2 steps per epoch" in notes[0]
    assert "30 local steps (≈15 epochs, fed.min-local-steps)" in notes[0]


def test_old_behaviour_and_explicit_steps_warn_when_too_few():
    steps, notes = _steps("fed.min-local-steps=0", n=84)
    assert steps == 2
    assert notes == ["site 0 trains only 2 local steps per round (84 images, batch 32): a GAN learns "
                     "little from so few; set fed.min-local-steps to 30 or more"]
    steps, notes = _steps("fed.local-steps=1", n=84)  # explicit steps win over the floor
    assert steps == 1 and "1 local step per round" in notes[0] and "fed.local-steps" in notes[0]
    assert _steps("fed.local-steps=40", n=84) == (40, [])
    assert _steps("fed.local-epochs=20", n=84) == (40, [])


def test_a_strategy_that_fixes_its_steps_is_left_alone():
    assert _steps("fed.strategy=fedsgd", n=84) == (1, [])


def test_the_notice_reaches_the_reporter_before_round_one(tiny):
    from fedsynth.config import build_config
    from fedsynth.data import load_dataset, partition_for
    from fedsynth.fed import Reporter, build_in_process

    class Capture(Reporter):
        def __init__(self):
            self.seen = []

        def run_start(self, plan):
            self.seen.append("start")

        def round_start(self, r, clients, total):
            self.seen.append(("round", r, total))

        def warning(self, text):
            self.seen.append(text)

    cfg = build_config(overrides=tiny + ["fed.min-local-steps=4", "fed.rounds=1", "eval.enabled=false"])
    rep = Capture()
    build_in_process(cfg, partition_for(cfg, load_dataset(cfg)), rep).run()
    # before the run's header (run_start) and round 1
    assert "2 sites (e.g. site 0): 32 images at batch 16" in rep.seen[0]
    assert rep.seen[1].startswith("2 sites (e.g. site 0) train only 4 local steps per round")
    assert rep.seen[2] == "start" and rep.seen[3] == ("round", 1, 8)  # 4 steps each, not one epoch's 2
