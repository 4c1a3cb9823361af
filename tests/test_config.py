"""Run configuration (ser_ray.config): YAML in, frozen dataclasses out, overrides, round trip."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from ser_ray import config as config_mod
from ser_ray.cli import build_parser, prepare_config
from ser_ray.config import (AudioConfig, PrepareConfig, S3Config, apply_overrides, dump, from_dict,
                            load, to_dict)


# --- from_dict --------------------------------------------------------------------------------

def test_defaults_from_empty_dict():
    cfg = from_dict(PrepareConfig, {})
    assert cfg == PrepareConfig()
    assert cfg.audio == AudioConfig() and cfg.s3 == S3Config()
    assert cfg.features == ("mfcc",) and cfg.audio.sample_rate == 16000


def test_unknown_top_level_key_names_valid_keys():
    with pytest.raises(ValueError) as exc:
        from_dict(PrepareConfig, {"inputs": ["a"], "featurs": ["mfcc"], "zzz": 1})
    msg = str(exc.value)
    assert "unknown key(s) ['featurs', 'zzz']" in msg
    for valid in ("features", "inputs", "audio", "label_set", "files_per_task"):
        assert repr(valid) in msg


def test_unknown_nested_key_names_its_path_and_the_nested_valid_keys():
    with pytest.raises(ValueError) as exc:
        from_dict(PrepareConfig, {"audio": {"sample_rate": 8000, "sr": 8000}})
    msg = str(exc.value)
    assert msg.startswith("config audio: unknown key(s) ['sr']")
    assert "'sample_rate'" in msg and "'trim'" in msg
    assert "'inputs'" not in msg  # the valid keys of the level that is wrong, not the top level


def test_tuples_from_lists_and_comma_strings():
    a = from_dict(PrepareConfig, {"inputs": ["x", "y"], "features": "mfcc, stft,,logmel"})
    assert a.inputs == ("x", "y")
    assert a.features == ("mfcc", "stft", "logmel")
    assert isinstance(a.inputs, tuple) and isinstance(a.features, tuple)
    assert from_dict(PrepareConfig, {"features": "mfcc"}).features == ("mfcc",)
    hash(a.inputs)  # frozen configs hold hashable tuples, not lists


def test_nested_dataclasses_and_optionals():
    cfg = from_dict(PrepareConfig, {
        "audio": {"trim": True, "duration_s": 2, "block_s": None, "rms_dbfs": -23},
        "s3": {"endpoint_url": "http://127.0.0.1:9000"},
        "num_workers": None,
    })
    assert isinstance(cfg.audio, AudioConfig) and isinstance(cfg.s3, S3Config)
    assert cfg.audio.trim is True
    assert cfg.audio.duration_s == 2.0 and isinstance(cfg.audio.duration_s, float)
    assert isinstance(cfg.audio.rms_dbfs, float)
    assert cfg.audio.block_s is None and cfg.num_workers is None
    assert cfg.audio.sample_rate == 16000  # unspecified nested fields keep their defaults
    assert cfg.s3.endpoint_url == "http://127.0.0.1:9000"
    assert from_dict(PrepareConfig, {"audio": None}).audio == AudioConfig()


@pytest.mark.parametrize("data, where", [
    ({"files_per_task": "many"}, "files_per_task"),
    ({"audio": {"sample_rate": 16000.5}}, "audio.sample_rate"),
    ({"audio": {"trim": "yes please"}}, "audio.trim"),
    ({"audio": {"offset_s": "soon"}}, "audio.offset_s"),
    ({"label_set": 7}, "label_set"),
])
def test_wrong_types_are_rejected_with_their_path(data, where):
    with pytest.raises(ValueError, match=f"config {where}: expected"):
        from_dict(PrepareConfig, data)


def test_non_mapping_is_rejected():
    with pytest.raises(ValueError, match="expected a mapping"):
        from_dict(PrepareConfig, ["inputs"])
    with pytest.raises(ValueError, match="config audio: expected a mapping"):
        from_dict(PrepareConfig, {"audio": 16000})


def test_configs_are_frozen():
    cfg = PrepareConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.output = "x"  # type: ignore[misc]


# --- overrides --------------------------------------------------------------------------------

def test_overrides_parse_yaml_values_into_nested_keys():
    data = apply_overrides({"audio": {"sample_rate": 8000}}, [
        "audio.trim=true", "feature_options.mfcc.n_mfcc=20", "audio.duration_s=2.5",
        "audio.block_s=null", "s3.endpoint_url=http://h:9000", "features=[mfcc, stft]",
        "output=a=b"])
    assert data == {
        "audio": {"sample_rate": 8000, "trim": True, "duration_s": 2.5, "block_s": None},
        "feature_options": {"mfcc": {"n_mfcc": 20}},
        "s3": {"endpoint_url": "http://h:9000"},
        "features": ["mfcc", "stft"],
        "output": "a=b",  # only the first '=' separates key and value
    }
    cfg = from_dict(PrepareConfig, data)
    assert cfg.audio.trim is True and cfg.audio.sample_rate == 8000
    assert cfg.feature_options == {"mfcc": {"n_mfcc": 20}}
    assert cfg.features == ("mfcc", "stft")


def test_override_without_equals_is_an_error():
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        apply_overrides({}, ["audio.trim"])


def test_override_of_unknown_key_is_rejected_by_load():
    with pytest.raises(ValueError, match=r"config audio: unknown key\(s\) \['trimm'\]"):
        load(PrepareConfig, overrides=["audio.trimm=true"])


# --- load: precedence -------------------------------------------------------------------------

def test_load_precedence_file_then_values_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "inputs": ["from-file"], "output": "out-file", "corpus": "ravdess",
        "features": ["logmel"], "num_workers": 3,
        "audio": {"sample_rate": 8000, "trim": True, "normalise": "peak"},
    }))
    cfg = load(PrepareConfig, path, ["audio.normalise=rms", "corpus=tess"],
               inputs=("from-values",), corpus="emodb", output=None, num_workers=None,
               features=["mfcc"])
    assert cfg.inputs == ("from-values",)          # value beats file
    assert cfg.features == ("mfcc",)               # value beats file
    assert cfg.corpus == "tess"                    # override beats value and file
    assert cfg.output == "out-file"                # None values do not erase the file's
    assert cfg.num_workers == 3
    assert cfg.audio.sample_rate == 8000 and cfg.audio.trim is True  # kept from the file
    assert cfg.audio.normalise == "rms"            # override merges into the file's audio


def test_load_without_file_and_empty_file(tmp_path):
    assert load(PrepareConfig) == PrepareConfig()
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load(PrepareConfig, empty, output="o").output == "o"


def test_load_rejects_a_non_mapping_file(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="YAML mapping"):
        load(PrepareConfig, path)


def test_cli_arguments_resolve_through_load(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("label_set: ekman7\naudio:\n  offset_s: 0.5\n")
    args = build_parser().parse_args([
        "prepare", "--input", "a", "b", "--input", "c", "--features", "mfcc,stft",
        "--config", str(path), "--set", "audio.trim=true", "--set",
        "feature_options.mfcc.n_mfcc=20", "--output", "o"])
    cfg = prepare_config(args)
    assert cfg.inputs == ("a", "b", "c")
    assert cfg.features == ("mfcc", "stft")
    assert cfg.label_set == "ekman7" and cfg.audio.offset_s == 0.5
    assert cfg.audio.trim is True and cfg.feature_options == {"mfcc": {"n_mfcc": 20}}
    assert cfg.strict is False  # --strict absent: the default, not None


# --- dump / load round trip -------------------------------------------------------------------

def test_dump_load_round_trip(tmp_path):
    cfg = PrepareConfig(
        inputs=("s3://bucket/emodb", "/data/shards-{000..003}.tar"), output="/runs/x",
        corpus="emodb", label_set="ekman7", features=("mfcc", "stft", "egemaps"),
        feature_options={"mfcc": {"n_mfcc": 20, "fmax": 7600.0}, "stft": {}},
        audio=AudioConfig(sample_rate=22050, trim=True, trim_top_db=25.0, pre_emphasis=0.97,
                          normalise="rms", rms_dbfs=-23.5, offset_s=0.5, duration_s=2.5,
                          pad=False, block_s=1.0, block_hop_s=0.5, min_duration_s=0.2),
        s3=S3Config(endpoint_url="http://127.0.0.1:8080", region="eu-west-1"),
        files_per_task=8, num_workers=4, cpus_per_worker=0.5, strict=True, seed=7)
    path = tmp_path / "config.yaml"
    dump(cfg, path)
    again = load(PrepareConfig, path)
    assert again == cfg
    assert isinstance(again.inputs, tuple) and isinstance(again.audio, AudioConfig)
    text = path.read_text()
    assert "!!python" not in text  # plain YAML: readable by any tool
    assert yaml.safe_load(text) == to_dict(cfg)


def test_round_trip_of_defaults_and_yaml_lookalike_strings(tmp_path):
    cfg = PrepareConfig(inputs=("yes", "null", "1.5", "on"), output="~")
    path = tmp_path / "c.yaml"
    dump(cfg, path)
    assert load(PrepareConfig, path) == cfg
    dump(PrepareConfig(), path)
    assert load(PrepareConfig, path) == PrepareConfig()


def test_to_dict_is_plain():
    d = to_dict(PrepareConfig(inputs=("a",), feature_options={"m": {"k": (1, 2)}}))
    assert d["inputs"] == ["a"] and d["features"] == ["mfcc"]
    assert d["feature_options"] == {"m": {"k": [1, 2]}}
    assert isinstance(d["audio"], dict) and d["audio"]["sample_rate"] == 16000


def test_shipped_presets_load(request):
    configs = request.config.rootpath / "configs"
    presets = sorted(configs.glob("*.yaml"))
    assert presets, "configs/*.yaml missing"
    from ser_ray.learn.tuning import SweepSpace, load_space

    for path in presets:
        if path.name.startswith("tune_"):  # Ray Tune search spaces
            assert isinstance(load_space(path), SweepSpace), path
            continue
        if path.name == "score.yaml":  # the scoring job's settings
            assert isinstance(config_mod.load(config_mod.ScoreConfig, path), config_mod.ScoreConfig)
            continue
        if path.name == "noise_protocol.yaml":  # a cv configuration
            cfg = config_mod.load(config_mod.LearnConfig, path)
            assert cfg.model == "imagenet_cnn" and cfg.noisy_snr_db == (15, 20, 40), cfg
            continue
        cfg = config_mod.load(PrepareConfig, path)
        assert isinstance(cfg, PrepareConfig), path


def test_prepare_preset_lists_exactly_the_defaults(request):
    path = request.config.rootpath / "configs" / "prepare.yaml"
    assert load(PrepareConfig, path) == PrepareConfig()


def test_score_preset_lists_exactly_the_defaults(request):
    path = request.config.rootpath / "configs" / "score.yaml"
    assert load(config_mod.ScoreConfig, path) == config_mod.ScoreConfig()


def test_bool_is_not_an_int():
    with pytest.raises(ValueError, match="files_per_task: expected int"):
        from_dict(PrepareConfig, {"files_per_task": True})


def test_written_configs_lose_url_passwords_and_are_written_whole(tmp_path):
    from ser_ray.config import ScoreConfig, public_dict, redact

    cfg = load(ScoreConfig, None, inputs=["s3://calls/x@y/in"], output="out",
               s3={"endpoint_url": "https://svc:hunter2@minio.local:9000/"})
    assert public_dict(cfg)["s3"]["endpoint_url"] == "https://minio.local:9000/"
    assert public_dict(cfg)["inputs"] == ["s3://calls/x@y/in"]  # an @ in a key is no password
    assert redact({"a": ["http://u@h", 3]}) == {"a": ["http://h", 3]}
    dump(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "hunter2" not in text and "minio.local" in text
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temp file left
