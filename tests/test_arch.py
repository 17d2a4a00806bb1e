from __future__ import annotations

import pytest

from evomerge.engine.arch import num_layers_of, place, rename_layer
from evomerge.errors import ModelError


@pytest.mark.parametrize("name, group, layer, kind", [
    ("model.embed_tokens.weight", "embed", None, "embed"),
    ("model.layers.0.self_attn.q_proj.weight", "layer", 0, "attn"),
    ("model.layers.11.mlp.down_proj.weight", "layer", 11, "mlp"),
    ("model.layers.3.input_layernorm.weight", "layer", 3, "norm"),
    ("model.norm.weight", "final", None, "norm"),
    ("lm_head.weight", "final", None, "head"),
    ("transformer.wte.weight", "embed", None, "embed"),
    ("transformer.wpe.weight", "embed", None, "embed"),
    ("transformer.h.2.attn.c_attn.weight", "layer", 2, "attn"),
    ("transformer.h.2.mlp.c_fc.bias", "layer", 2, "mlp"),
    ("transformer.h.2.ln_1.weight", "layer", 2, "norm"),
    ("transformer.ln_f.weight", "final", None, "norm"),
    ("gpt_neox.layers.1.attention.dense.weight", "layer", 1, "attn"),
    ("model.language_model.layers.4.mlp.gate_proj.weight", "layer", 4, "mlp"),
])
def test_place(name, group, layer, kind):
    p = place(name)
    assert (p.group, p.layer, p.kind) == (group, layer, kind)


def test_unknown_architecture_names_the_tensor():
    with pytest.raises(ModelError, match=r"Cannot place tensor 'encoder\.block\.0\.w'"):
        place("encoder.block.0.w")


def test_rename_layer():
    assert rename_layer("model.layers.5.mlp.up_proj.weight", 2) == "model.layers.2.mlp.up_proj.weight"
    assert rename_layer("transformer.h.5.ln_1.bias", 0) == "transformer.h.0.ln_1.bias"
    assert rename_layer("lm_head.weight", 3) == "lm_head.weight"


def test_num_layers():
    assert num_layers_of({"num_hidden_layers": 6}) == 6
    assert num_layers_of({"n_layer": 12}) == 12
    assert num_layers_of({"text_config": {"num_hidden_layers": 4}}) == 4
    with pytest.raises(ModelError, match="no layer count"):
        num_layers_of({})
