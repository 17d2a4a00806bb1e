"""Catalogue of bad inputs, by category: each must end with exit code 2, one line on stderr
naming what is wrong, and nothing written. ::

    python bench/bad_inputs.py        # ~2 min; writes results/bench/bad_inputs.json

Builds two tiny Llama families in a temporary directory (a base and experts, plus models that
differ in tokenizer, vocabulary, tying, depth and architecture) and damages copies of them.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fuzz_inputs import run_cli  # noqa: E402
from models import make_model  # noqa: E402

NAN, INF = float("nan"), float("inf")


def _models(root: Path) -> dict[str, str]:
    from lora_models import make_adapter

    base = make_model(root / "base", 0)
    m = {"base": base, "a": make_model(root / "a", 1, base), "b": make_model(root / "b", 2, base),
         "deep": make_model(root / "deep", 3, layers=6), "vocab": make_model(root / "vocab", 4, vocab=40),
         "tied": make_model(root / "tied", 5, tied=True)}
    m["lora"] = make_adapter(root / "lora", base, 6)  # PEFT LoRA adapters of base and deep
    m["lora_r8"] = make_adapter(root / "lora_r8", base, 7, r=8)
    m["lora_deep"] = make_adapter(root / "lora_deep", m["deep"], 8)
    (root / "texts.jsonl").write_text('{"text": "w1 w2 w3 w4"}\n')
    return {k: str(v) for k, v in m.items()} | {"texts": str(root / "texts.jsonl")}


def _adapter(models: dict, tmp: Path, name: str, **config) -> str:
    """``base+copy of the lora adapter`` with adapter_config.json keys changed."""
    dest = Path(_damaged(models["lora"], tmp / f"lora_{name}", lambda d: None))
    cfg = json.loads((dest / "adapter_config.json").read_text())
    (dest / "adapter_config.json").write_text(json.dumps({**cfg, **config}))
    return f"{models['base']}+{dest}"


def _lora_recipe(models: dict, *refs: str, method: str = "task_arithmetic") -> dict:
    return {"merge_method": method, "base_model": models["base"], "dtype": "float32",
            "models": [{"model": r, "parameters": {"weight": 0.5}} for r in refs]}


def _damaged(src: str, dest: Path, how: Callable[[Path], None]) -> str:
    shutil.copytree(src, dest)
    how(dest)
    return str(dest)


def _weights(fn: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def how(d: Path) -> None:
        f = d / "model.safetensors"
        f.write_bytes(fn(f.read_bytes()))
    return how


def _sharded(missing: bool) -> Callable[[Path], None]:
    def how(d: Path) -> None:
        f = d / "model.safetensors"
        header_len = int.from_bytes(f.read_bytes()[:8], "little")
        names = [k for k in json.loads(f.read_bytes()[8:8 + header_len]) if k != "__metadata__"]
        f.rename(d / "model-00001-of-00002.safetensors")
        shard = "model-00002-of-00002.safetensors" if missing else "model-00001-of-00002.safetensors"
        (d / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {n: shard for n in names}}))
    return how


@dataclass(frozen=True)
class Raw:
    """A case a dict cannot say (YAML aliases, duplicate keys, several documents) or one run
    with its own arguments: ``{input}``, ``{out}`` and ``{study}`` in ``argv`` are filled."""

    text: str = ""
    argv: tuple[str, ...] = ("merge", "{input}", "{out}", "-q")
    study: str = ""  # a results root with a study, which the case may read


def recipe(models: dict, **over) -> dict:
    doc = {"merge_method": "ties", "base_model": models["base"], "dtype": "float32",
           "models": [{"model": models["a"], "parameters": {"weight": 0.6, "density": 0.5}},
                      {"model": models["b"], "parameters": {"weight": 0.4, "density": 0.5}}]}
    doc.update(over)
    return doc


def with_param(models: dict, **params) -> dict:
    doc = recipe(models)
    doc["models"][0]["parameters"] = {"weight": 0.6, "density": 0.5, **params}
    return doc


def space(models: dict, **over) -> dict:
    doc = {"name": "bad", "base_model": models["base"],
           "models": {"a": models["a"], "b": models["b"]}, "method": "ties",
           "parameters": {"weight": [0.0, 1.0], "density": [0.2, 1.0]},
           "evaluators": {"ppl": {"type": "perplexity", "path": models["texts"], "name": "t"}},
           "objectives": [{"evaluator": "ppl", "task": "t", "metric": "perplexity",
                           "direction": "minimize"}],
           "budget": {"trials": 2}, "device": "cpu"}
    for key, value in over.items():
        node, *path = key.split(".")
        if path:
            doc[node] = {**doc[node], path[0]: value}
        else:
            doc[key] = value
    return doc


def cases(models: dict, tmp: Path) -> dict[str, list[tuple[str, dict | list]]]:
    dmg = {name: _damaged(models["b"], tmp / name, how) for name, how in {
        "truncated": _weights(lambda b: b[:-100]),
        "garbage_header": _weights(lambda b: b"\xff" * 8 + b[8:]),
        "header_not_json": _weights(lambda b: b[:8] + b"{not json" + b[17:]),
        "empty_file": _weights(lambda b: b""),
        "missing_shard": _sharded(missing=True),
        "bad_config": lambda d: (d / "config.json").write_text("{oops"),
        "no_config": lambda d: (d / "config.json").unlink(),
        "no_weights": lambda d: (d / "model.safetensors").unlink(),
        "bad_index": lambda d: (_sharded(False)(d), (d / "model.safetensors.index.json")
                                .write_text("[]")),
    }.items()}
    r, s = recipe, space
    return {
        "recipe: non-finite numbers": [
            ("weight .nan", with_param(models, weight=NAN)),
            ("density .inf", with_param(models, density=INF)),
            ("gradient with -inf", with_param(models, weight=[0.1, -INF])),
            ("filter value .nan", with_param(models, weight=[{"filter": "mlp", "value": NAN}])),
            ("global lambda .nan", r(models, parameters={"lambda": NAN})),
        ],
        "recipe: values and structure": [
            ("density above 1", with_param(models, density=2.0)),
            ("weight as text", with_param(models, weight="heavy")),
            ("unknown parameter", with_param(models, sharpness=1.0)),
            ("unknown method", r(models, merge_method="soup")),
            ("ties without base", {k: v for k, v in r(models).items() if k != "base_model"}),
            ("unknown field", r(models, colour="blue")),
            ("unknown dtype", r(models, dtype="float8")),
            ("layer_range beyond the model", {"merge_method": "passthrough", "slices": [
                {"sources": [{"model": models["a"], "layer_range": [2, 9]}]}]}),
            ("reversed layer_range", {"merge_method": "passthrough", "slices": [
                {"sources": [{"model": models["a"], "layer_range": [3, 1]}]}]}),
            ("tokenizer_source beside a tokenizer block",
             r(models, tokenizer_source="base", tokenizer={"source": "union"})),
            ("pad_to_multiple_of 0", r(models, tokenizer={"pad_to_multiple_of": 0})),
            ("named chat template", r(models, tokenizer_source="base", chat_template="chatml")),
            ("token row from an unmerged model", r(models, tokenizer={
                "tokens": {"<x>": {"source": models["deep"]}}})),
            ("not a mapping", ["merge_method", "ties"]),
        ],
        "source models": [
            ("missing model directory", r(models, base_model=str(tmp / "nowhere"))),
            ("different tokenizers, one size",
             _with_b(models, _damaged(models["b"], tmp / "tok", _swap_tokens))),
            ("vocabulary sizes differ", _with_b(models, models["vocab"])),
            ("union over different base vocabularies",
             {**_with_b(models, models["vocab"]), "tokenizer_source": "union"}),
            ("tied beside untied head", _with_b(models, models["tied"])),
            ("layer counts differ", _with_b(models, models["deep"])),
            ("architecture differs", _with_b(models, _damaged(models["b"], tmp / "arch", _arch))),
        ],
        "weight files": [(name.replace("_", " "), _with_b(models, path)) for name, path in dmg.items()],
        **_new_categories(models, tmp),
        "LoRA adapters": [
            ("DoRA adapter", _lora_recipe(models, _adapter(models, tmp, "dora", use_dora=True))),
            ("not LoRA (LoHa)", _lora_recipe(models, _adapter(models, tmp, "loha", peft_type="LOHA"))),
            ("unknown variant key", _lora_recipe(models, _adapter(models, tmp, "qa", use_qalora=True))),
            ("PiSSA initialisation", _lora_recipe(models, _adapter(
                models, tmp, "pissa", init_lora_weights="pissa"))),
            ("rank differs from r", _lora_recipe(models, _adapter(models, tmp, "r16", r=16))),
            ("module the base lacks", _lora_recipe(models, f"{models['base']}+{models['lora_deep']}")),
            ("other architecture", _lora_recipe(models, _adapter(models, tmp, "arch", auto_mapping={
                "base_model_class": "GPT2LMHeadModel"}))),
            ("missing base", _lora_recipe(models, f"{tmp / 'nowhere'}+{models['lora']}")),
            ("adapter without its base", _lora_recipe(models, models["lora"])),
            ("lorahub over two ranks", _lora_recipe(models, f"{models['base']}+{models['lora']}",
                                                    f"{models['base']}+{models['lora_r8']}",
                                                    method="lorahub")),
        ],
        "search space": [
            ("bound .nan", s(models, parameters={"weight": [NAN, 1.5]})),
            ("bound .inf", s(models, parameters={"weight": [0.0, INF]})),
            ("reversed bounds", s(models, parameters={"weight": [1.0, 0.0]})),
            ("sigma0 .nan", s(models, optimizer={"name": "cma", "sigma0": NAN})),
            ("unknown optimizer", s(models, optimizer={"name": "adam"})),
            ("zero budget", s(models, budget={"trials": 0})),
            ("unknown evaluator", s(models, evaluators={"ppl": {"type": "bleu"}})),
            ("unknown evaluator option", s(models, evaluators={"ppl": {
                "type": "perplexity", "path": models["texts"], "name": "t", "colour": 1}})),
            ("evaluator file missing", s(models, evaluators={"ppl": {
                "type": "perplexity", "path": str(tmp / "none.jsonl"), "name": "t"}})),
            ("metric the evaluator lacks", s(models, objectives=[
                {"evaluator": "ppl", "task": "t", "metric": "accuracy", "direction": "maximize"}])),
            ("empty device", s(models, device="")),
            ("bad direction", s(models, objectives=[
                {"evaluator": "ppl", "task": "t", "metric": "perplexity", "direction": "down"}])),
            ("damaged source weights", {**s(models), "models": {"a": models["a"],
                                                                "b": dmg["truncated"]}}),
            ("DoRA adapter among the models", {**s(models), "models": {
                "a": models["a"], "b": _adapter(models, tmp, "dora_s", use_dora=True)}}),
            ("data-flow space over adapters", {**s(models), "method": None, "parameters": {},
                                               "dfs": {"repeats": 1}, "models": {
                                                   "a": models["a"], "b": models["lora"]}}),
        ],
    }


def _bomb(indent: str = "", levels: int = 9) -> str:
    """Nine YAML anchors, each nine aliases of the one before: 600 bytes, 387 million nodes."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "".join(f"{indent}{line}\n" for line in lines)


def _text(doc: dict) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def _chain(models: dict, name, final_ref=None) -> str:
    stage = {"name": name, **recipe(models)}
    final = {"merge_method": "passthrough", "slices": [{"sources": [
        {"model": name if final_ref is None else final_ref, "layer_range": [0, 4]}]}]}
    return yaml.safe_dump_all([stage, final], sort_keys=False)


def _study(models: dict, tmp: Path) -> Path:
    """A results root with study ``bad`` (2 evaluations), for the study-file cases."""
    root = tmp / "study"
    (tmp / "study_space.yaml").write_text(_text(space(models)))
    code, err = run_cli(["search", str(tmp / "study_space.yaml"), "--results", str(root),
                         "--trials", "2", "-q"])
    assert code == 0, err
    return root


def _new_categories(models: dict, tmp: Path) -> dict[str, list]:
    block = "evomerge:\n  notes:\n" + _bomb("    ")
    r = _text(recipe(models))
    study = str(_study(models, tmp))
    (tmp / "existing.yaml").write_text("mine\n")
    (tmp / "foreign").mkdir()
    shutil.copytree(models["a"], tmp / "foreign" / "st")
    export = ("export", "bad", "--results", "{study}", "--best", "-o")
    sp = _text(space(models))
    return {
        "YAML expansion and keys (recipes, chains, spaces)": [
            ("alias bomb as a parameter value", Raw(block + r.replace("weight: 0.6", "weight: *a8"))),
            ("alias bomb in the evomerge: block", Raw(block + r)),
            ("alias bomb in a chained stage", Raw(_chain(models, "st").replace(
                "name: st\n", "name: st\n" + block, 1))),
            ("alias bomb in a search space", Raw(sp.replace("budget:", "pinned: {x: *a8}\nbudget:")
                                                 .replace("name: bad", "name: bad\nnotes:\n"
                                                          + _bomb("  ")), (
                "search", "{input}", "--results", "{out}", "-q"))),
            ("recursive alias", Raw("a: &a [*a]\n" + r)),
            ("collections nested 200 deep", Raw(r.replace("weight: 0.6", "weight: " + "[" * 200
                                                          + "0.6" + "]" * 200))),
            ("a 3 MB file", Raw(r + "# " + "x" * 3_000_000 + "\n")),
            ("a key given twice", Raw("merge_method: linear\n" + r)),
        ],
        "names and paths": [
            ("study name ..", Raw(sp, ("search", "{input}", "--study=..", "--results", "{out}",
                                       "-q"))),
            ("study name /abs", Raw(sp, ("search", "{input}", "--study=/tmp/evomerge-bad-abs",
                                         "--results", "{out}", "-q"))),
            ("space name ../x", Raw(sp.replace("name: bad", "name: ../x"), (
                "search", "{input}", "--results", "{out}", "-q"))),
            ("study name with spaces and an option (Slurm)", Raw(sp, (
                "slurm", "submit", "{input}", "--study=x --output=/tmp/y", "--results", "{out}"))),
            ("stage name ../../x", Raw(_chain(models, "../../x"))),
            ("stage name 5 (a number)", Raw(_chain(models, 5))),
            ("stage dir evomerge did not build", Raw(_chain(models, "st"), (
                "merge", "{input}", "{out}", "--stages", str(tmp / "foreign"), "-q"))),
            ("export -o an existing file", Raw("", (*export, str(tmp / "existing.yaml")), study)),
            ("export -o a directory", Raw("", (*export, str(tmp / "foreign")), study)),
            ("--trials 0", Raw("", ("resume", "bad", "--results", "{study}", "--trials", "0",
                                    "-q"), study)),
            ("--trials -3", Raw("", ("resume", "bad", "--results", "{study}", "--trials", "-3",
                                     "-q"), study)),
        ],
        "recipe semantics": [
            ("a model listed twice", {**recipe(models), "models": [recipe(models)["models"][0]] * 2}),
            ("normalize over weights that cancel", {"merge_method": "linear", "models": [
                {"model": models["a"], "parameters": {"weight": 1.0}},
                {"model": models["b"], "parameters": {"weight": -0.999999}}]}),
            ("num_hidden_layers edited, tensors unchanged", _with_b(models, _damaged(
                models["b"], tmp / "fewer", _fewer_layers))),
        ],
        "study file": [
            ("a recorded recipe that is an alias bomb", Raw("", (*export, "{out}"),
                                                            _bombed_study(Path(study)))),
        ],
    }


def _fewer_layers(d: Path) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_hidden_layers"] = 3  # the tensors hold 4
    (d / "config.json").write_text(json.dumps(cfg))


def _bombed_study(root: Path) -> str:
    """A copy of the study under ``root`` whose best trial's recorded recipe is a bomb."""
    import sqlite3

    copy_root = root.with_name("bombed_study")
    shutil.copytree(root, copy_root)
    db = sqlite3.connect(copy_root / "bad" / "study.db")
    with db:
        db.execute("UPDATE trial_user_attributes SET value_json = ? WHERE key = 'recipe'",
                   (json.dumps(_bomb() + "merge_method: linear\nmodels: *a8\n"),))
    db.close()
    return str(copy_root)


def _with_b(models: dict, b: str) -> dict:
    doc = recipe(models)
    doc["models"][1]["model"] = b
    return doc


def _swap_tokens(d: Path) -> None:
    tok = json.loads((d / "tokenizer.json").read_text())
    v = tok["model"]["vocab"]
    v["w1"], v["w2"] = v["w2"], v["w1"]
    (d / "tokenizer.json").write_text(json.dumps(tok))


def _arch(d: Path) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["MistralForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg))


def run_case(category: str, doc, tmp: Path, i: int) -> dict:
    """Run one case in ``tmp/case<i>/``; handled = exit 2, one line on stderr, and nothing
    written: no output, no temporary file, nothing beside the case. ``seconds`` is kept."""
    d = tmp / f"case{i}"
    d.mkdir()
    path = d / "in.yaml"
    out = d / "out"
    if isinstance(doc, Raw):
        path.write_text(doc.text)
        argv = [a.replace("{input}", str(path)).replace("{out}", str(out))
                .replace("{study}", doc.study) for a in doc.argv]
    else:
        path.write_text(yaml.safe_dump(copy.deepcopy(doc), allow_unicode=True))
        argv = (["search", str(path), "--results", str(out), "--trials", "1", "-q"]
                if category == "search space" else ["merge", str(path), str(out), "-q"])
    before = _listing(tmp, d, doc)
    start = time.perf_counter()
    code, err = run_cli(argv)
    seconds = time.perf_counter() - start
    after, inside = _listing(tmp, d, doc), sorted(p.name for p in d.iterdir())
    handled = (code == 2 and err.startswith("evomerge: error: ") and "\n" not in err
               and not out.exists() and inside == ["in.yaml"] and after == before)
    row = {"code": code, "error": err, "handled": handled, "seconds": round(seconds, 3)}
    if not handled:  # what the command left behind, so a failure explains itself
        row["changed"] = {"appeared": sorted(set(after) - set(before)),
                          "vanished": sorted(set(before) - set(after)), "inside": inside,
                          "out_exists": out.exists()}
    return row


def _listing(tmp: Path, case: Path, doc) -> list[str]:
    """Everything under ``tmp`` but the case's own directory (and the case's study files)."""
    keep = [str(case)] + ([str(doc.study)] if isinstance(doc, Raw) and doc.study else [])
    return sorted(str(p) for p in tmp.rglob("*") if not any(str(p).startswith(k) for k in keep)
                  and "models" not in p.relative_to(tmp).parts[:1])


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bad_inputs_"))
    try:
        models = _models(tmp / "models")
        rows, n = [], 0
        for category, items in cases(models, tmp).items():
            for name, doc in items:
                n += 1
                rows.append({"category": category, "case": name, **run_case(category, doc, tmp, n)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table: dict[str, list] = {}
    for row in rows:
        t = table.setdefault(row["category"], [0, 0, 0.0])
        t[0] += 1
        t[1] += row["handled"]
        t[2] = max(t[2], row["seconds"])
    print("| category | cases | one sentence, exit 2, nothing written | slowest (s) |\n"
          "|---|---:|---:|---:|")
    for cat, (total, ok, slowest) in table.items():
        print(f"| {cat} | {total} | {ok} | {slowest:.2f} |")
    for row in rows:
        if not row["handled"]:
            print(f"NOT HANDLED: {row['category']} / {row['case']}: exit {row['code']}: {row['error'][:300]}")
    out = ROOT / "results" / "bench" / "bad_inputs.json"
    out.write_text(json.dumps({"rows": rows, "table": table}, indent=1))
    return 0 if all(r["handled"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
