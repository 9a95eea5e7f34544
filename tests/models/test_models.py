"""Model config, parallel-fit errors, weight fusion layouts and attention masking (one process)."""

from __future__ import annotations

import pytest
import torch

from dsm_engine.config import ConfigError
from dsm_engine.models.config import MODEL_PRESETS, check_parallel_fit, model_config
from dsm_engine.models.convert import canonical_to_hf, shard_tp, unshard_tp
from dsm_engine.models.parallel import ParallelConfig


def test_deepseekmath_7b_preset_matches_the_paper_model():
    cfg = MODEL_PRESETS["deepseekmath-7b"]
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads) == (30, 4096, 32)
    assert (cfg.ffn_hidden_size, cfg.vocab_size, cfg.rotary_base) == (11008, 102400, 10000.0)
    assert cfg.untie_embeddings and cfg.norm_epsilon == 1e-6
    assert 6.8e9 < cfg.num_params() < 7.0e9


def test_model_config_overrides_and_unknown_preset():
    cfg = model_config("tiny-gqa", seq_length=64)
    assert cfg.kv_heads == 2 and cfg.max_position_embeddings == 64
    with pytest.raises(ConfigError, match="unknown model preset"):
        model_config("nope")


def test_heads_not_divisible_by_tp_names_the_field():
    with pytest.raises(ConfigError, match=r"num_attention_heads=4 .*tp=3"):
        check_parallel_fit(
            model_config("tiny", vocab_size=384, ffn_hidden_size=192), ParallelConfig(tp=3)
        )
    with pytest.raises(ConfigError, match="num_query_groups=2"):
        check_parallel_fit(model_config("tiny-gqa"), ParallelConfig(tp=4))
    with pytest.raises(ConfigError, match="num_layers=2"):
        check_parallel_fit(model_config("tiny"), ParallelConfig(pp=4))


def test_gqa_groups_must_divide_heads():
    with pytest.raises(ConfigError, match="num_query_groups=3"):
        model_config("tiny", num_query_groups=3)


def test_fc1_tp_shards_hold_matching_gate_and_up_rows():
    cfg = model_config("tiny")
    fc1 = torch.randn(2 * cfg.ffn_hidden_size, cfg.hidden_size)
    name = "decoder.layers.0.mlp.linear_fc1.weight"
    shards = [shard_tp(name, fc1, r, 2) for r in range(2)]
    gate, up = fc1.chunk(2)
    assert torch.equal(shards[1], torch.cat([gate.chunk(2)[1], up.chunk(2)[1]]))
    assert torch.equal(unshard_tp(name, shards), fc1)


def test_qkv_split_follows_megatron_group_layout():
    cfg = model_config("tiny-gqa")  # 4 heads, 2 groups, head_dim 16
    d, h = cfg.head_dim, cfg.hidden_size
    rows = [torch.full((d, h), float(i)) for i in range(8)]  # g0: q0 q1 k v | g1: q2 q3 k v
    hf = canonical_to_hf(
        {"decoder.layers.0.self_attention.linear_qkv.weight": torch.cat(rows)}, cfg
    )
    q = hf["model.layers.0.self_attn.q_proj.weight"].reshape(4, d, h)[:, 0, 0]
    k = hf["model.layers.0.self_attn.k_proj.weight"].reshape(2, d, h)[:, 0, 0]
    assert q.tolist() == [0, 1, 4, 5] and k.tolist() == [2, 6]


@pytest.fixture(scope="module")
def tiny_model():
    from dsm_engine.models import build_model, destroy_parallel, initialize_parallel

    ctx = initialize_parallel()
    torch.manual_seed(0)
    model = build_model(model_config("tiny-gqa"), ctx).eval()
    yield model
    destroy_parallel()


def test_document_ids_block_cross_document_attention(tiny_model):
    from dsm_engine.models import model_logits

    ids = torch.randint(0, 256, (2, 16))
    docs = torch.tensor([[0] * 6 + [1] * 10] * 2)
    pos = torch.cat([torch.arange(6), torch.arange(10)]).expand(2, 16)
    with torch.no_grad():
        packed = model_logits(tiny_model, ids, position_ids=pos, attention_mask=docs)
        alone = model_logits(tiny_model, ids[:, 6:])
        first = model_logits(tiny_model, ids[:, :6])
    torch.testing.assert_close(packed[:, 6:], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed[:, :6], first, rtol=1e-5, atol=1e-5)


def test_boolean_mask_equals_document_ids(tiny_model):
    from dsm_engine.models import model_logits

    ids = torch.randint(0, 256, (1, 12))
    docs = torch.tensor([[0] * 5 + [1] * 7])
    masked = (docs[:, :, None] != docs[:, None, :])[:, None]  # True = must not attend
    with torch.no_grad():
        a = model_logits(tiny_model, ids, attention_mask=docs)
        b = model_logits(tiny_model, ids, attention_mask=masked)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_hidden_states_times_lm_head_give_the_logits(tiny_model):
    from dsm_engine.models import forward_hidden, lm_head_weight, model_logits

    ids = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        hidden = forward_hidden(tiny_model, ids)  # [s, b, h]
        logits = model_logits(tiny_model, ids)  # [b, s, V]
    assert hidden.shape == (10, 2, 64)
    torch.testing.assert_close((hidden @ lm_head_weight(tiny_model).T).transpose(0, 1), logits)


def test_model_yaml_configs_equal_the_presets():
    from pathlib import Path

    from dsm_engine.config import load_config
    from dsm_engine.models.config import ModelConfig

    root = Path(__file__).resolve().parents[2] / "configs" / "models"
    for name in ("deepseekmath-7b", "tiny"):
        assert load_config(ModelConfig, root / f"{name}.yaml") == MODEL_PRESETS[name]
