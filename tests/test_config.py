from pathlib import Path

import pytest

from pipeline.config import ScoreConfig, load_config
from pipeline.errors import ConfigError

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
    # one line naming the key (ConfigError: `vscore score` prints it and exits 2)
    with pytest.raises(ConfigError, match=r"engine\.kindd: unknown key \(did you mean engine\.kind\?\)"):
        load_config(REPO / "configs" / "local.yaml", ["engine.kindd=vllm"])
    with pytest.raises(ConfigError, match="prompt.template: Input should be"):
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


def test_resource_plan_from_cluster():
    from pipeline.run.plan import make_plan

    cfg = load_config(REPO / "configs" / "cluster-s3.yaml", ["engine.actors=auto", "decode.actors=auto", "decode.actors_per_engine=8"])
    plan = make_plan(cfg, {"CPU": 96.0, "GPU": 4.0})
    assert plan.engine_actors == 4 and plan.gpus_per_engine == 1
    assert plan.decode_actors_max == 32  # 8 per engine x 4, fits in 96 - 4*2 CPUs
    tp = load_config(REPO / "configs" / "cluster-s3.yaml", ["engine.actors=auto", "engine.tensor_parallel_size=2"])
    assert make_plan(tp, {"CPU": 64.0, "GPU": 8.0}).engine_actors == 4
    small = make_plan(load_config(REPO / "configs" / "cluster-s3.yaml", ["decode.actors=auto", "engine.actors=auto"]), {"CPU": 10.0, "GPU": 2.0})
    assert small.decode_actors_max == int((10 - 2 * 2 - 0.25) // 1)  # capped by spare CPUs
    local = make_plan(load_config(REPO / "configs" / "local.yaml"), {"CPU": 2.0})
    assert local.engine_actors == 1 and local.gpus_per_engine == 0 and not local.notes


def test_progress_eta():
    from pipeline.run.stats import progress

    p = progress({"elapsed_s": 10.0, "rows_scored": 20, "rows_read": 30, "shards_read": 3, "output_tokens": 500,
                  "errors_decode": 2}, total_shards=10)
    assert p["videos_per_s"] == 2.0 and p["output_tokens_per_s"] == 50.0 and p["errors"] == 2
    assert p["est_total"] == 100 and p["eta_s"] == 40.0
