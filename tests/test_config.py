from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.config import ScoreConfig, load_config

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["local.yaml", "cluster-s3.yaml"])
def test_shipped_configs_validate(name):
    cfg = load_config(REPO / "configs" / name)
    assert isinstance(cfg, ScoreConfig)
    assert cfg.prompt.template == "vs2-eval"
    assert cfg.sampling.temperature == 0.7


def test_cluster_config_is_vllm_on_gpus():
    cfg = load_config(REPO / "configs" / "cluster-s3.yaml")
    assert cfg.engine.kind == "vllm" and cfg.engine.model == "TIGER-Lab/VideoScore2"
    assert cfg.engine.num_gpus == 1 and cfg.input.shards.startswith("s3://") and cfg.output.path.startswith("s3://")


def test_dotted_overrides_parse_yaml_scalars():
    cfg = load_config(REPO / "configs" / "local.yaml", ["engine.kind=vllm", "decode.actors=3", "output.partition_cols=[run_id]",
                                                         "sampling.greedy=true", "input.storage.endpoint_url=http://127.0.0.1:9"])
    assert cfg.engine.kind == "vllm" and cfg.decode.actors == 3 and cfg.output.partition_cols == ["run_id"]
    assert cfg.sampling.greedy is True and cfg.input.storage.endpoint_url == "http://127.0.0.1:9"


def test_unknown_and_invalid_fields_rejected():
    with pytest.raises(ValidationError):
        load_config(REPO / "configs" / "local.yaml", ["engine.kindd=vllm"])
    with pytest.raises(ValidationError):
        load_config(REPO / "configs" / "local.yaml", ["prompt.template=vs3"])
    with pytest.raises(ValueError):
        load_config(REPO / "configs" / "local.yaml", ["no-equals-sign"])


def test_run_id_follows_score_affecting_settings_only():
    base = load_config(REPO / "configs" / "local.yaml")
    same = load_config(REPO / "configs" / "local.yaml", ["decode.actors=7", "engine.batch_size=3"])
    other = load_config(REPO / "configs" / "local.yaml", ["prompt.template=vs2-public"])
    hotter = load_config(REPO / "configs" / "local.yaml", ["sampling.temperature=1.0"])
    assert base.resolved_run_id() == same.resolved_run_id()
    assert len({base.resolved_run_id(), other.resolved_run_id(), hotter.resolved_run_id()}) == 3
    assert load_config(REPO / "configs" / "local.yaml", ["output.run_id=mine"]).resolved_run_id() == "mine"
