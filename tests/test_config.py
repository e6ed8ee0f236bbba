import pytest

from fedsynth.config import Config, UserError, build_config, load_config, parse_override


def test_defaults_are_the_documented_default_run():
    cfg = build_config()
    assert cfg.data.source == "phantom-xray" and cfg.data.image_size == 64
    assert cfg.partition.clients == 2 and cfg.partition.scheme == "iid"
    assert cfg.fed.strategy == "fedavg" and cfg.fed.local_epochs == 1
    assert cfg.train.lr_g == 2e-4 and (cfg.train.beta1, cfg.train.beta2) == (0.5, 0.999)


@pytest.mark.parametrize("text,expected", [
    ("fed.rounds=3", ("fed.rounds", 3)),
    ("fed.fraction=0.5", ("fed.fraction", 0.5)),
    ("train.reset-optimizer=true", ("train.reset-optimizer", True)),
    ("data.source=phantom-ct", ("data.source", "phantom-ct")),
    ('run.name="a b"', ("run.name", "a b")),
])
def test_override_values_are_toml_literals_or_bare_strings(text, expected):
    assert parse_override(text) == expected


def test_overrides_apply_and_ints_widen_to_float():
    cfg = build_config(overrides=["fed.rounds=3", "train.lr-g=1", "data.source=phantom-ct"])
    assert cfg.fed.rounds == 3 and cfg.train.lr_g == 1.0 and isinstance(cfg.train.lr_g, float)
    assert cfg.data.source == "phantom-ct"


@pytest.mark.parametrize("override,names", [
    ("fed.roundz=3", "fed.roundz"),
    ("nosuch.key=1", "nosuch.key"),
    ("rounds=3", "rounds"),
    ("fed.rounds=three", "fed.rounds"),
    ("fed.rounds=2.5", "fed.rounds"),
    ("partition.clients=0", "partition.clients"),
    ("fed.fraction=0", "fed.fraction"),
    ("fed.fraction=1.5", "fed.fraction"),
    ("data.source=mnist", "data.source"),
    ("data.image-size=48", "data.image-size"),
    ("train.reset-optimizer=1", "train.reset-optimizer"),
    ("fed.local_epochs=2", "fed.local_epochs"),
    ("fed.min-clients=5", "fed.min-clients"),
])
def test_bad_values_name_the_key(override, names):
    with pytest.raises(UserError) as e:
        build_config(overrides=[override])
    msg = str(e.value)
    assert names in msg and "\n" not in msg


def test_unknown_section_in_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[feds]\nrounds = 2\n")
    with pytest.raises(UserError, match=r"\[feds\]"):
        load_config(p)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[fed\nrounds=")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(bad)


def test_written_config_reloads_to_the_same_config(tmp_path):
    cfg = build_config(overrides=["fed.rounds=7", "eval.every=2", "data.source=phantom-histo"])
    p = tmp_path / "config.toml"
    p.write_text(cfg.to_toml())
    assert load_config(p) == cfg
    assert "local-epochs" in cfg.to_toml()  # kebab-case on disk


def test_file_then_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[fed]\nrounds = 4\nstrategy = "local"\n')
    cfg = load_config(p, ["fed.rounds=9"])
    assert cfg.fed.rounds == 9 and cfg.fed.strategy == "local"
    assert isinstance(cfg, Config)
