"""Bullet: a model or adapter directory is data. Nothing read from it (config.json, safetensors
headers, the shard index, tokenizer files, adapter_config.json) chooses a file outside its
place, or costs unbounded memory or time: each hostile input below is one sentence and exit 2,
with nothing written."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from fuzz_inputs import run_cli, write_yaml

from evomerge.engine.arch import MAX_LAYERS, layer_index, num_layers_of, place
from evomerge.engine.shell import empty_model, meta_model
from evomerge.engine.sources import ModelSource
from evomerge.errors import ModelError

DEEP = "[" * 100_000 + "]" * 100_000  # json's recursive parser: RecursionError, not an error


def _copy(tiny, tmp_path: Path, name: str = "m", src: str = "b") -> Path:
    dest = tmp_path / name
    shutil.copytree(tiny[src], dest)
    return dest


def _edit_json(model: Path, name: str, **changes) -> Path:
    data = json.loads((model / name).read_text())
    data.update(changes)
    (model / name).write_text(json.dumps(data))
    return model


def _edit_config(model: Path, **changes) -> Path:
    return _edit_json(model, "config.json", **changes)


def _read_st(file: Path) -> tuple[dict, bytes]:
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write_st(file: Path, header: dict | str, data: bytes) -> None:
    text = (header if isinstance(header, str) else json.dumps(header)).encode()
    file.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _merge(tmp_path: Path, *models: str | Path) -> tuple[int, str]:
    """``evomerge merge`` of a linear recipe over ``models`` into tmp_path/out: (code, stderr);
    a refusal must leave no output behind."""
    recipe = write_yaml({"merge_method": "linear", "dtype": "float32",
                         "models": [{"model": str(m), "parameters": {"weight": 0.5}}
                                    for m in models]}, tmp_path / "r.yaml")
    code, err = run_cli(["merge", str(recipe), str(tmp_path / "out"), "-q"])
    if code != 0:
        assert not (tmp_path / "out").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    return code, err


def _refused(code: int, err: str, *parts: str) -> None:
    assert code == 2 and err.startswith("evomerge: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    for part in parts:
        assert part in err, err


# ---- 1. config.json sizes against the tensors, and a shell that allocates nothing -------------

@pytest.mark.parametrize("key, value, tensor", [
    ("intermediate_size", 1_000_000_000, "model.layers.0.mlp.up_proj.weight"),
    ("hidden_size", 4096, "mlp.up_proj.weight"),
    ("vocab_size", 10**12, "model.embed_tokens.weight"),
    ("intermediate_size", "64", "model.layers.0.mlp.up_proj.weight"),
])
def test_config_sizes_must_match_the_tensors(tiny, tmp_path, key, value, tensor):
    bad = _edit_config(_copy(tiny, tmp_path), **{key: value})
    code, err = _merge(tmp_path, tiny["a"], bad)
    _refused(code, err, f"config.json sets {key} = {value!r}", tensor, "has shape [")


def test_config_sizes_in_text_config_are_checked(tiny, tmp_path):
    model = _copy(tiny, tmp_path)
    cfg = json.loads((model / "config.json").read_text())
    cfg["text_config"] = {"intermediate_size": 10**9}
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"intermediate_size = 1000000000 but tensor"):
        ModelSource(str(model))


def test_shell_from_a_huge_config_allocates_nothing(tiny):
    from transformers import AutoConfig, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny["base"])
    config.intermediate_size = 10**9  # 4 layers x 3 x 32e9 floats: 1.5 TB if allocated
    model = meta_model(config, torch.float32)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    real = LlamaForCausalLM(AutoConfig.from_pretrained(tiny["base"]))
    for name, buf in real.named_buffers():  # buffers computed, not left empty
        assert torch.equal(dict(model.named_buffers())[name], buf), name


def test_empty_model_checks_its_config(tiny, tmp_path):
    big = _edit_config(_copy(tiny, tmp_path), intermediate_size=10**9)
    with pytest.raises(ModelError, match=r"intermediate_size = 1000000000"):
        empty_model(ModelSource(str(big)), torch.float32, torch.device("cpu"))
    # sizes not checked by name: bounded by the parameters the weights hold, and by 1 GiB of
    # computed buffers (rotary frequencies: head_dim / 2 floats)
    heads = _edit_config(_copy(tiny, tmp_path, "heads"), num_key_value_heads=2**30)
    with pytest.raises(ModelError, match=r"config\.json describes a model of \d+ parameters"):
        empty_model(ModelSource(str(heads)), torch.float32, torch.device("cpu"))
    wide = _edit_config(_copy(tiny, tmp_path, "wide"), head_dim=2**36)
    with pytest.raises(ModelError, match=r"bytes of buffers \(model\.rotary_emb\.inv_freq"):
        empty_model(ModelSource(str(wide)), torch.float32, torch.device("cpu"))
    model = empty_model(ModelSource(tiny["base"]), torch.float32, torch.device("cpu"))
    assert {p.device.type for p in model.parameters()} == {"cpu"}


# ---- 2. layer counts ---------------------------------------------------------------------------

@pytest.mark.parametrize("count", [10**10, MAX_LAYERS + 1, -1, True])
def test_layer_count_is_bounded(tiny, tmp_path, count):
    bad = _edit_config(_copy(tiny, tmp_path), num_hidden_layers=count)
    code, err = _merge(tmp_path, tiny["a"], bad)
    _refused(code, err, f"num_hidden_layers = {count}, which is not a layer count")


@pytest.mark.parametrize("config", [{"num_hidden_layers": True}, {"n_layer": -3},
                                    {"text_config": {"num_layers": 10**10}}])
def test_num_layers_of_refuses_booleans_negatives_and_huge_counts(config):
    with pytest.raises(ModelError, match="not a layer count"):
        num_layers_of(config)


def test_a_layer_index_of_thousands_of_digits_is_not_a_traceback(tiny, tmp_path):
    model = _copy(tiny, tmp_path)
    header, data = _read_st(model / "model.safetensors")
    header["model.layers." + "9" * 5000 + ".mlp.up_proj.weight"] = header.pop(
        "model.layers.3.mlp.up_proj.weight")
    _write_st(model / "model.safetensors", header, data)
    _refused(*_merge(tmp_path, tiny["a"], model), "has no tensor 'model.layers.3.mlp.up_proj")
    assert layer_index("model.layers." + "9" * 5000 + ".mlp.up_proj.weight") is None
    with pytest.raises(ModelError, match="Cannot place tensor"):
        place("transformer.h." + "9" * 5000 + ".mlp.c_fc.weight")


# ---- 3. deeply nested JSON ---------------------------------------------------------------------

def _deep_config(model: Path) -> str:
    (model / "config.json").write_text('{"x": ' + DEEP + "}")
    return "config.json"


def _deep_header(model: Path) -> str:
    header, data = _read_st(model / "model.safetensors")
    _write_st(model / "model.safetensors", '{"__metadata__": ' + DEEP + ", "
              + json.dumps(header)[1:], data)
    return "safetensors header"


def _deep_tokenizer(model: Path) -> str:
    (model / "tokenizer.json").write_text('{"model": ' + DEEP + "}")
    return "tokenizer.json"


def _deep_index(model: Path) -> str:
    (model / "model.safetensors.index.json").write_text('{"weight_map": ' + DEEP + "}")
    return "model.safetensors.index.json"


@pytest.mark.parametrize("make", [_deep_config, _deep_header, _deep_tokenizer, _deep_index])
def test_deeply_nested_json_is_one_sentence(tiny, tmp_path, make):
    model = _copy(tiny, tmp_path)
    name = make(model)
    _refused(*_merge(tmp_path, tiny["a"], model), name, "nests JSON more than 64 levels")


def test_deeply_nested_adapter_config_is_one_sentence(tiny, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": ' + DEEP + "}")
    code, err = _merge(tmp_path, tiny["a"], f"{tiny['base']}+{adapter}")
    _refused(code, err, "adapter_config.json nests JSON more than 64 levels")


def test_oversized_config_is_not_read(tiny, tmp_path):
    model = _copy(tiny, tmp_path)
    with open(model / "config.json", "r+b") as f:
        f.truncate(65 << 20)  # sparse: no disk used
    _refused(*_merge(tmp_path, tiny["a"], model), "config.json is", "bytes, more than the 64 MiB")


# ---- 4. LoRA adapter numbers -------------------------------------------------------------------

def _adapter(root: Path, rank: int = 4, **config) -> Path:
    """A LoRA adapter of the tiny base on layer 0's q_proj (32 x 32), written by hand: rank-0
    factors are a file PEFT would not write."""
    root.mkdir()
    (root / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "lora_alpha": 8, "target_modules": ["q_proj"],
         **config}))
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.weight"
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(rank, 32, generator=gen), torch.randn(32, rank, generator=gen)
    header, data, at = {}, b"", 0
    for side, t in (("A", a), ("B", b)):
        raw = t.numpy().tobytes()
        header[key.format(side)] = {"dtype": "F32", "shape": list(t.shape),
                                    "data_offsets": [at, at + len(raw)]}
        data, at = data + raw, at + len(raw)
    _write_st(root / "adapter_model.safetensors", header, data)
    return root


@pytest.mark.parametrize("rank, config, message", [
    (4, {"lora_alpha": 1e308}, "lora_alpha = 1e+308 in adapter_config.json is not a usable"),
    (4, {"lora_alpha": 10**400}, "lora_alpha = 1000000"),
    (4, {"lora_alpha": 4e7}, "is at most 1e6 in size; module model.layers.0.self_attn.q_proj)."),
    (4, {"lora_alpha": "8"}, "lora_alpha = '8' in adapter_config.json is not a usable"),
    (4, {"alpha_pattern": {"q_proj": 1e300}}, "alpha_pattern['q_proj'] = 1e+300"),
    (0, {"r": 0}, "r = 0 in adapter_config.json is not a LoRA rank"),
    (4, {"r": True}, "r = True in adapter_config.json is not a LoRA rank"),
    (4, {"rank_pattern": ["q_proj"]}, "rank_pattern = ['q_proj'] in adapter_config.json is not"),
])
def test_adapter_numbers_are_refused_before_the_merge(tiny, tmp_path, rank, config, message):
    adapter = _adapter(tmp_path / "adapter", rank, **config)
    code, err = _merge(tmp_path, tiny["a"], f"{tiny['base']}+{adapter}")
    _refused(code, err, message)


def test_a_plain_hand_written_adapter_merges(tiny, tmp_path):
    adapter = _adapter(tmp_path / "adapter")
    assert _merge(tmp_path, tiny["a"], f"{tiny['base']}+{adapter}")[0] == 0


# ---- 5. shapes torch cannot build --------------------------------------------------------------

@pytest.mark.parametrize("shape, message", [
    ([0, 2**63], "has shape [0, 9223372036854775808], which no tensor can have"),
    ([0, 2**62, 4], "which no tensor can have"),
    ([0, -1], "which no tensor can have"),
    ([1] * 99 + [0], "has 100 dimensions; torch builds tensors of at most 64"),
])
def test_shapes_torch_cannot_build_are_refused(tiny, tmp_path, shape, message):
    model = _copy(tiny, tmp_path)
    header, data = _read_st(model / "model.safetensors")
    header["model.norm.bias"] = {"dtype": "F32", "shape": shape,
                                 "data_offsets": [len(data), len(data)]}
    _write_st(model / "model.safetensors", header, data)
    with pytest.raises(ModelError, match=r"tensor 'model\.norm\.bias' has"):
        ModelSource(str(model))
    _refused(*_merge(tmp_path, tiny["a"], model), message)


def test_sixty_four_dimensions_are_accepted(tiny, tmp_path):
    model = _copy(tiny, tmp_path)
    header, data = _read_st(model / "model.safetensors")
    header["model.norm.weight"]["shape"] = [1] * 63 + [32]
    _write_st(model / "model.safetensors", header, data)
    assert ModelSource(str(model)).shape("model.norm.weight") == (1,) * 63 + (32,)


# ---- 6. files outside the model directory ------------------------------------------------------

@pytest.mark.parametrize("name", ["merges.txt", "tokenizer.json", "config.json"])
def test_a_symlink_out_of_the_model_dir_is_refused(tiny, tmp_path, name):
    secret = tmp_path / "secret"
    secret.mkdir()
    model = _copy(tiny, tmp_path)
    (secret / name).write_bytes((model / name).read_bytes() if (model / name).exists()
                                else b"PRIVATE KEY")
    (model / name).unlink(missing_ok=True)
    (model / name).symlink_to(secret / name)
    code, err = _merge(tmp_path, model, tiny["a"])  # model first: its tokenizer is copied
    _refused(code, err, f"{name} points outside its model directory",
             str((secret / name).resolve()))


def test_tokenizer_config_cannot_name_a_tokenizer_file_outside(tiny, tmp_path):
    """``tokenizer_config.json`` is data: transformers before 5.13 opened a ``tokenizer_file``
    it named verbatim (CWE-22), so a model directory could make every tokenizer evomerge loads
    (worker, scoring, vocabularies) read another file. pyproject requires transformers>=5.13,
    which takes the directory's own file; this fails if an older one is installed."""
    from transformers import AutoTokenizer

    model = _copy(tiny, tmp_path)
    secret = tmp_path / "secret"
    secret.mkdir()
    own = json.loads((model / "tokenizer.json").read_text())
    vocab = own["model"]["vocab"]
    token = next(t for t in vocab if t.startswith("w"))
    vocab["SECRETTOKEN"] = vocab.pop(token)
    (secret / "tokenizer.json").write_text(json.dumps(own))
    _edit_json(model, "tokenizer_config.json", tokenizer_file=str(secret / "tokenizer.json"))
    got = AutoTokenizer.from_pretrained(str(model), use_fast=True).get_vocab()
    assert "SECRETTOKEN" not in got and token in got


@pytest.mark.parametrize("names, refused", [
    (["../secret/tokenizer.1.0.json"], "fast_tokenizer_files entry '../secret/tokenizer.1.0.json'"
                                       " points outside its model directory"),
    ("ABSOLUTE", "points outside its model directory"),
    ("tokenizer.1.0.json", "fast_tokenizer_files is not a list of file names"),
    (["tokenizer.1.0.json", "tokenizer.json"], None),  # names of its own: merged as before
], ids=["relative", "absolute", "not-a-list", "own-files"])
def test_fast_tokenizer_files_must_name_files_inside(tiny, tmp_path, names, refused):
    """transformers (5.25 too) opens the ``tokenizer.<version>.json`` that
    ``fast_tokenizer_files`` names, joined to the directory: ``../`` or an absolute name read
    another directory's tokenizer (the reviewer's probe: the secret vocabulary was loaded)."""
    model = _copy(tiny, tmp_path)
    secret = tmp_path / "secret"
    secret.mkdir()
    shutil.copy(model / "tokenizer.json", secret / "tokenizer.1.0.json")
    shutil.copy(model / "tokenizer.json", model / "tokenizer.1.0.json")
    _edit_json(model, "tokenizer_config.json", fast_tokenizer_files=(
        [str(secret / "tokenizer.1.0.json")] if names == "ABSOLUTE" else names))
    code, err = _merge(tmp_path, model, tiny["a"])
    if refused is None:
        assert code == 0, err
    else:
        _refused(code, err, refused)


def test_weights_may_be_linked_from_elsewhere_but_must_be_safetensors(tiny, tmp_path):
    """Shards linked to save disk (or an old huggingface_hub local_dir) are weights: they
    must parse as safetensors, so a link to a secret is refused by its header, not read."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    model = _copy(tiny, tmp_path)
    (model / "model.safetensors").rename(elsewhere / "w.safetensors")
    (model / "model.safetensors").symlink_to(elsewhere / "w.safetensors")
    assert _merge(tmp_path, model, tiny["a"])[0] == 0
    shutil.rmtree(tmp_path / "out")
    (elsewhere / "w.safetensors").write_bytes(b"PRIVATE KEY, long enough to look like a file")
    code, err = _merge(tmp_path, model, tiny["a"])
    assert code == 2 and "PRIVATE" not in err and "safetensors" in err, err


def test_a_symlink_loop_is_refused(tiny, tmp_path):
    model = _copy(tiny, tmp_path)
    (model / "merges.txt").symlink_to("vocab.json")
    (model / "vocab.json").symlink_to("merges.txt")
    _refused(*_merge(tmp_path, model, tiny["a"]), "vocab.json is a symlink that resolves nowhere")


def test_a_symlink_inside_the_model_dir_is_followed(tiny, tmp_path):
    model = _copy(tiny, tmp_path)
    (model / "inner").mkdir()
    (model / "tokenizer.json").rename(model / "inner" / "tokenizer.json")
    (model / "tokenizer.json").symlink_to("inner/tokenizer.json")
    assert _merge(tmp_path, model, tiny["a"])[0] == 0
    assert (tmp_path / "out" / "tokenizer.json").read_text() == \
        (model / "inner" / "tokenizer.json").read_text()


def test_the_hugging_face_cache_layout_is_read(tiny, tmp_path):
    """snapshots/<rev>/FILE -> ../../blobs/<hash>: files resolve outside the snapshot, inside
    the repository's blobs/."""
    repo = tmp_path / "hub" / "models--org--tiny"
    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for i, file in enumerate(sorted(Path(tiny["b"]).iterdir())):
        shutil.copy(file, blobs / f"blob{i}")
        (snap / file.name).symlink_to(f"../../blobs/blob{i}")
    assert _merge(tmp_path, snap, tiny["a"])[0] == 0


@pytest.mark.parametrize("where", ["../../../elsewhere/model.safetensors", "ABSOLUTE"])
def test_a_shard_index_naming_files_outside_is_refused(tiny, tmp_path, where):
    model = _copy(tiny, tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (model / "model.safetensors").rename(outside / "model.safetensors")
    target = str(outside / "model.safetensors") if where == "ABSOLUTE" else where
    header, _ = _read_st(outside / "model.safetensors")
    (model / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {n: target for n in header if n != "__metadata__"}}))
    code, err = _merge(tmp_path, tiny["a"], model)
    _refused(code, err, f"shard {target!r} named by model.safetensors.index.json points "
                        "outside its model directory")
