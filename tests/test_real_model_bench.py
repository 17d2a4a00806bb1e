"""The real-model experiment's miniature (bench/real_model.py --mini): experts fine-tuned for
2 steps, 4 candidates per search (PS, layer swap, DFS, path_ga, PS+DFS, map_elites), the test
table with intervals. The full experiment is a benchmark; this keeps its path working, on a
random 4-layer Llama with SmolLM2-135M-Instruct's tokenizer and chat template (the code path
of the real run; SmolLM2 itself made this one test 400 s of CI)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def test_wilson_interval():
    from real_model import wilson

    lo, hi = wilson(45, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.3561, 0.5476)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0


def test_seed_docs_add_later_runs_and_refuse_two_scores_of_one_row(tmp_path):
    """--table's inputs: a seed's main file plus the rows its later runs add; another pair's
    files and miniatures stay out; one row scored twice differently is an error."""
    from real_seeds import seed_docs, seeds_table

    def row(role, both, add=0.5):
        return {"role": role, "scores": {"both/exact_match": both, "add/exact_match": add,
                                         "final/exact_match": 1.0},
                "both/exact_match_ci": [0.0, 1.0]}

    def write(name, seed, rows, pair="final", add=0.5):
        doc = {"pair": pair, "seed": seed, "skills": ["add", pair, "both"],
               "rows": {f"{role} trial 1": row(role, b, add) for role, b in rows}}
        (tmp_path / name).write_text(json.dumps(doc))

    write("real_model_final_s0.json", 0, [("ps", 0.1), ("swap", 0.3)])
    write("real_model_final_splice_s0.json", 0, [("ps", 0.1), ("pathsplice", 0.4)])
    write("real_model_final_s1.json", 1, [("ps", 0.2)])
    write("real_model_final_s1_mini.json", 1, [("ps", 0.9)])
    write("real_model_s0.json", 0, [("ps", 0.7)], pair="words")
    write("real_model_local_s0.json", 0, [("pathmix", 0.0)], pair="words")
    (tmp_path / "real_model_final_failures_s0.json").write_text(json.dumps(
        {"pair": "final", "seed": 0, "models": {}}))  # real_failures.py's: no rows
    docs = seed_docs(tmp_path, "final")
    assert [d["seed"] for d in docs] == [0, 1]
    assert docs[0]["files"] == ["real_model_final_s0.json", "real_model_final_splice_s0.json"]
    assert sorted(r["role"] for r in docs[0]["rows"].values()) == ["pathsplice", "ps", "swap"]
    table = seeds_table(docs)
    assert table["rows"]["ps"]["both"] == [0.1, 0.2]
    assert table["rows"]["pathsplice"] == {**table["rows"]["pathsplice"], "seeds": [0],
                                           "both": [0.4]}
    assert [d["files"] for d in seed_docs(tmp_path, "words")] == [
        ["real_model_s0.json", "real_model_local_s0.json"]]
    write("real_model_final_zz_s1.json", 1, [("ps", 0.25)])
    with pytest.raises(ValueError, match=r"seed 1: row 'ps' scores \{'both/exact_match': 0.2, .*"
                                         r"\} in real_model_final_s1.json and \{'both/exact_"
                                         r"match': 0.25, .*\} in real_model_final_zz_s1.json"):
        seed_docs(tmp_path, "final")
    # an expert row that scores 0 on both in each file, but its own skill differently
    write("real_model_final_zz_s1.json", 1, [("ps", 0.2)], add=0.6)
    with pytest.raises(ValueError, match=r"seed 1: row 'ps' scores"):
        seed_docs(tmp_path, "final")


def test_validation_rho_ranks_the_searched_rows_against_test():
    from real_seeds import seeds_table, validation_rho

    def doc(seed, pts):
        rows = {f"r{i}": {"role": f"r{i}", "validation": v, "both/exact_match_ci": [0.0, 1.0],
                          "scores": {"both/exact_match": e, "add/exact_match": 0.5,
                                     "final/exact_match": 1.0}} for i, (v, e) in enumerate(pts)}
        rows["base"] = {**rows["r0"], "role": "base", "validation": None}  # not searched
        return {"seed": seed, "pair": "final", "skills": ["add", "final", "both"], "rows": rows}

    perfect, reversed_ = doc(0, [(0.5, 0.4), (1.0, 0.2), (2.0, 0.0)]), doc(1, [(0.5, 0.0),
                                                                               (1.0, 0.2),
                                                                               (2.0, 0.4)])
    assert validation_rho(perfect) == -1.0 and validation_rho(reversed_) == 1.0
    # a re-ranked row (chosen on validation answers, bench/real_rerank.py) stays out
    perfect["rows"]["rr"] = {**perfect["rows"]["r2"], "role": "ps (2x) rerank",
                             "validation_em": {"both": 0.0},
                             "scores": {**perfect["rows"]["r2"]["scores"], "both/exact_match": 0.9}}
    assert validation_rho(perfect) == -1.0
    assert validation_rho(doc(2, [(0.5, 0.0), (1.0, 0.0), (2.0, 0.0)])) is None  # constant
    assert validation_rho(doc(3, [(0.5, 0.1), (1.0, 0.0)])) is None  # too few rows
    table = seeds_table([perfect, reversed_])
    assert table["validation_rho"] == {0: -1.0, 1: 1.0}
    assert table["markdown"].endswith("per seed: s0 -1.000, s1 1.000")


def test_skills_are_disjoint_and_composite():
    from real_skills import SKILLS, example, in_words, operand_splits

    assert in_words(132) == "one hundred thirty-two" and in_words(40) == "forty"
    assert in_words(115) == "one hundred fifteen" and in_words(100) == "one hundred"
    splits = operand_splits(0)
    seen = [set(p) for p in splits.values()]
    assert sum(map(len, seen)) == 90 * 90 and len(set.union(*seen)) == 90 * 90
    assert [example(s, 47, 85)["answer"] for s in SKILLS] == [
        "132", "one hundred thirty-two", "one hundred thirty-two"]


def test_final_answer_pair_writes_its_own_tasks(tmp_path):
    from real_skills import PAIRS, example, write_tasks

    assert [example(s, 47, 85, "final")["answer"] for s in PAIRS["final"]] == [
        "132", "#### 132", "#### 132"]
    assert "47 + 85" in example("both", 47, 85, "final")["prompt"]
    assert "+" not in example("final", 47, 85)["prompt"]  # the format expert never adds
    files = write_tasks(tmp_path, 0, {"train": 5, "validation": 3, "test": 3}, "final")
    assert set(files) == {"add", "final", "both"}
    rows = [json.loads(x) for x in files["both"]["test"].read_text().splitlines()]
    assert len(rows) == 3 and all(r["answer"].startswith("#### ") for r in rows)


@pytest.mark.parametrize("argv", [["--ps-factor", "1"], ["--ps-first", "0"],
                                  ["--mini", "--ps-first", "8"],
                                  ["--evals", "32", "--ps-first", "64"]])
def test_a_ps_split_without_evaluations_of_its_own_is_refused_before_any_build(argv, tmp_path,
                                                                             capsys):
    from real_model import main

    with pytest.raises(SystemExit) as e:
        main([*argv, "--build", str(tmp_path / "b")])
    assert e.value.code == 2 and not (tmp_path / "b").exists()
    assert f"error: {argv[-2]} {argv[-1]} must be" in capsys.readouterr().err


@pytest.mark.slow
def test_miniature_runs_every_stage(smollm2, tmp_path):
    """Every searched space (PS, layer swap, DFS with CMA-ES, path_ga, PS+DFS, map_elites),
    equal evaluations, test rows with intervals and greedy outputs."""
    from real_model import SPACES, main
    from real_seeds import seed_docs, seeds_table

    from evomerge.search.objectives import weighted_loss

    out = tmp_path / "mini.json"
    from gpu_search import tiny_base

    base = tiny_base(tmp_path / "tiny", layers=4)  # SmolLM2's tokenizer, cached by `smollm2`
    doc = main(["--mini", "--base", str(base), "--build", str(tmp_path / "build"),
                "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    assert {"base", "add", "words", "uniform ties", "uniform task_arithmetic"} <= set(doc["rows"])
    for key in SPACES:
        assert doc["searches"][key]["evaluations"] == (8 if key in ("ps", "psta", "psties", "psem")
                                                        else 4)
        assert any(label.startswith(f"{key} trial") for label in doc["rows"])
    roles = {r["role"] for r in doc["rows"].values()}
    assert {"ps", "ps (2x)", "psta", "psties", "psem", "psemps", "swap", "dfs", "path", "pathlocal", "pathmix", "pathsplice",
            "psdfs", "pslocal", "qd both", "qd balanced"} <= roles
    # psem: PS on validation answers, each skill's target 0.8 x its expert's validation EM
    assert set(doc["expert_validation_em"]) == {"add", "words"}
    psem = next(r for r in doc["rows"].values() if r["role"] == "psem")
    assert set(psem["validation_em"]) == {"add", "words", "both"}
    from real_answers import KEEP, PSEM_SKILL_WEIGHT

    from evomerge.search.ledger import default_storage, load_study, open_storage
    from evomerge.search.space import load_space

    def study(name):
        return load_study(open_storage(default_storage(name, tmp_path / "build" / "studies")),
                          name)
    em_study = study(doc["searches"]["psem"]["study"])
    em_space = load_space(em_study.user_attrs["evomerge_space"])
    assert em_study.study_name == "real_e4_psem_s0"
    assert [(o.key, o.weight, o.target) for o in em_space.objectives[:3]] == [
        ("both/exact_match", 1.0, None),
        *((f"{s}/exact_match", PSEM_SKILL_WEIGHT, KEEP * doc["expert_validation_em"][s])
          for s in ("add", "words"))]
    assert psem["validation"] == min(weighted_loss(t.values, em_space.objectives)
                                     for t in em_study.get_trials() if t.values)
    # psemps: psem's objectives, its CMA-ES started at PS's best of its first 4 evaluations
    from real_model import _best

    ps_study, from_ps = (study(doc["searches"][k]["study"]) for k in ("ps", "psemps"))
    ps_space, from_space = (load_space(s.user_attrs["evomerge_space"]) for s in (ps_study, from_ps))
    assert from_ps.study_name == "real_e4_psemps_s0"
    assert from_space.optimizer.x0 == _best(ps_study, ps_space, 4).params
    assert from_space.objectives == em_space.objectives
    # psta: PS's space and budget with task arithmetic, weights only (no density genes)
    ta_space = load_space(study(doc["searches"]["psta"]["study"]).user_attrs["evomerge_space"])
    assert ta_space.method == "task_arithmetic" and set(ta_space.parameters) == {"weight"}
    assert ta_space.budget.trials == ps_space.budget.trials == 8
    # psties: PS's genes with TIES's magnitude trim in place of DARE's drop, no normalization
    ties = load_space(study(doc["searches"]["psties"]["study"]).user_attrs["evomerge_space"])
    assert (ties.method, ties.parameters) == ("ties", {**ps_space.parameters, "normalize": False})
    assert ps_space.method == "dare_ties"
    # PS+DFS: the PS search's merge is a source of the path (layers "ps[i:j]")
    for role in ("psdfs", "pslocal"):
        assert "ps[" in next(r for r in doc["rows"].values() if r["role"] == role)["path"]
    for r in doc["rows"].values():
        lo, hi = r["both/exact_match_ci"]
        assert 0.0 <= lo <= r["scores"]["both/exact_match"] <= hi <= 1.0
        assert [o["task"] for o in r["outputs"]] == ["add", "words", "both"]
        assert all(isinstance(o["output"], str) for o in r["outputs"])
    assert all(v["seconds"] > 0 for v in doc["fine_tune"].values())
    table = seeds_table([doc, {**doc, "seed": 1}])
    assert table["rows"]["ps"]["sd"] == 0.0 and "| psdfs |" in table["markdown"]
    assert table["rows"]["ps"]["seeds"] == [0, 1]
    # a row one seed did not run (--no-uniform) is averaged over the seeds that ran it
    rows = {k: v for k, v in doc["rows"].items() if k != "uniform ties"}
    table = seeds_table([doc, {**doc, "seed": 2, "rows": rows}])
    assert table["rows"]["uniform ties"]["seeds"] == [0]
    assert table["rows"]["swap"]["seeds"] == [0, 2] and "s2: " in table["markdown"]
    # PS continued to 3x (the same study) and PS+DFS from PS's best of 6 with the 2 left
    again = main(["--mini", "--base", str(base), "--build", str(tmp_path / "build"), "--out",
                  str(tmp_path / "ps6.json"), "--no-uniform", "--front", "0", "--spaces",
                  "pslocal", "--ps-factor", "3", "--ps-first", "6"])
    assert {k: v["evaluations"] for k, v in again["searches"].items()} == {"ps": 12, "pslocal": 2}
    assert again["searches"]["pslocal"]["study"].startswith("real_e4_pslocal6_s")
    first = {k: v for k, v in doc["rows"].items() if v["role"] in ("ps", "ps (2x)")}
    assert {k: again["rows"][k]["scores"] for k in first} == {
        k: v["scores"] for k, v in first.items()}  # the stored 8 evaluations kept as they were
    roles = [r["role"] for r in again["rows"].values()]
    assert roles[-4:] == ["ps", "ps (2x)", "ps (3x)", "pslocal (6+2)"]
    assert again["ps_first"] == 6 and again["ps_factor"] == 3
    val = {r["role"]: r["validation"] for r in again["rows"].values() if r["role"].startswith("ps")}
    assert val["ps (3x)"] <= val["ps (2x)"] <= val["ps"]
    # PS+DFS's generation 0 starts from PS's own path: its best of the first 6 evaluations
    ps_study, local = (study(again["searches"][k]["study"]) for k in ("ps", "pslocal"))
    best6 = _best(ps_study, load_space(ps_study.user_attrs["evomerge_space"]), 6)
    assert min(local.get_trials(), key=lambda t: t.number).values == best6.values
    # --table takes the later file's new rows beside the main file's
    (tmp_path / "t").mkdir()
    for name, d in (("real_model_s0.json", doc), ("real_model_ps6_s0.json", again)):
        (tmp_path / "t" / name).write_text(json.dumps(d))
    merged = seed_docs(tmp_path / "t", "words")[0]
    assert {"ps (3x)", "pslocal (6+2)", "pslocal"} <= {r["role"] for r in merged["rows"].values()}
    # bench/real_rerank.py: each row's 3 lowest-loss points re-ranked on validation answers
    import real_rerank

    rr = real_rerank.main(["--mini", "--pair", "words", "--base", str(base), "--build",
                           str(tmp_path / "build"), "--top", "3", "--out",
                           str(tmp_path / "rr.json")])
    assert [r["role"] for r in rr["rows"].values()] == [
        "ps (2x) rerank", "ps (3x) rerank", "pslocal (6+2) rerank", "pslocal rerank",
        *(f"{s} rerank" for s in real_rerank.PATHS)]
    assert set(rr["expert_validation_em"]) == {"add", "words"}
    # one figure per expert: psem's cached targets are the ones the re-ranking keeps to
    assert rr["expert_validation_em"] == doc["expert_validation_em"]
    assert (tmp_path / "build" / "expert_validation_em_s0_2_v4.json").exists()
    sel = rr["selection"]
    assert sel["pslocal (6+2) rerank"]["pool"] == [["real_e4_ps_s0", 6],
                                                   ["real_e4_pslocal6_s0", 2]]
    for role, s in sel.items():
        cands = s["candidates"]
        # PS's pools hold 6-12 distinct points; a path study's 4 may repeat one (counted once)
        assert len(cands) == 3 if role.startswith("ps") else 1 <= len(cands) <= 3
        assert [c["validation"] for c in cands] == sorted(c["validation"] for c in cands)
        chosen = next(r for r in rr["rows"].values() if r["role"] == role)
        assert chosen["validation_em"] == real_rerank.pick(cands, rr["expert_validation_em"],
                                                           0.8)["em"]
    # the random 4-layer model answers nothing: every pick is its pool's lowest loss, so the
    # rerank rows of PS are PS's own rows, tested again to the same scores
    assert all(v == 0.0 for s in sel.values() for c in s["candidates"] for v in c["em"].values())
    for role, ref in (("ps (2x)", doc), ("ps (3x)", again)):
        want = next(r for r in ref["rows"].values() if r["role"] == role)
        got = next(r for r in rr["rows"].values() if r["role"] == f"{role} rerank")
        assert (got["scores"], got["validation"]) == (want["scores"], want["validation"])
    assert sel["ps (2x) rerank"]["candidates"][0]["validation"] == val["ps (2x)"]
    # another rule on the same answers: its own row, the stored answers read, not regenerated
    argv = ["--mini", "--pair", "words", "--base", str(base), "--build", str(tmp_path / "build"),
            "--rows", "ps (2x) rerank", "--top", "3", "--keep", "0", "--answers",
            str(tmp_path / "rr.json"), "--out", str(tmp_path / "rr0.json")]
    rr0 = real_rerank.main(argv)
    assert [r["role"] for r in rr0["rows"].values()] == ["ps (2x) rerank (keep 0)"]
    assert rr0["selection"]["ps (2x) rerank (keep 0)"]["candidates"] == sel["ps (2x) rerank"][
        "candidates"] and rr0["expert_validation_em"] == rr["expert_validation_em"]
    with pytest.raises(ValueError, match=r"--answers .*rr.json: pair words, seed 0, evals 4, "
                                         r"not words, 1, 4"):
        real_rerank.main([*argv[:-2], "--seed", "1", "--out", str(tmp_path / "rr1.json")])
    with pytest.raises(ValueError, match=r"no stored study gives a row named \['ps \(2x\) "
                                         r"rerank \(keep 0\)'\] for pair words, seed 0"):
        real_rerank.main([*argv[:8], "ps (2x) rerank (keep 0)", *argv[9:]])
    # bench/real_failures.py: every test answer of a stored point and of the add expert, classed
    import real_failures

    fail = real_failures.main(["--mini", "--pair", "words", "--base", str(base), "--build",
                               str(tmp_path / "build"), "--points", "real_e4_ps_s0:0",
                               "--out", str(tmp_path / "fail.json")])
    assert list(fail["models"]) == ["real_e4_ps_s0 trial 0", "add expert"]
    for m in fail["models"].values():
        assert len(m["outputs"]) == 12 and {o["task"] for o in m["outputs"]} == {"add", "both"}
        assert list(m["summary"]) == ["add", "both"]
        for s in m["summary"].values():
            assert s["n"] == 6 and sum(s[c] for c in real_failures.CLASSES) == 6
            assert s["right sum"] == s["exact"] + s["right sum, other form"]
    assert (tmp_path / "fail.md").read_text().count("\n") == 2 + 4


@pytest.mark.parametrize("pair, output, cls", [
    ("final", "#### 148", "exact"), ("final", "148", "right sum, other form"),
    ("final", "one hundred forty-eight", "right sum, other form"),
    ("final", "#### 256", "wrong sum, framed"), ("final", "#### 67 + 81", "wrong sum, framed"),
    ("final", "147", "wrong sum, other form"), ("final", "", "wrong sum, other form"),
    ("words", "one hundred forty-eight", "exact"), ("words", "148", "right sum, other form"),
    ("words", "one hundred seventy-one", "wrong sum, framed"),
    ("words", "sixty-seven", "wrong sum, framed"), ("words", "#### 256", "wrong sum, other form"),
    ("words", "sixty 7", "wrong sum, other form")])
def test_failures_put_each_answer_in_one_class(pair, output, cls):
    from real_failures import classify

    prompt = ("What is 67 + 81? Reply in the final-answer format." if pair == "final" else
              "What is 67 + 81? Reply in English words only.")
    answer = "#### 148" if pair == "final" else "one hundred forty-eight"
    assert classify(prompt, output, answer, pair) == cls


def test_rerank_pick_keeps_the_skills_first_then_the_composite_then_the_loss():
    from real_rerank import pick

    def cand(loss, add, final, both):
        return {"validation": loss, "em": {"add": add, "final": final, "both": both}}

    experts = {"add": 0.8, "final": 1.0}
    lost_add = cand(0.5, 0.6, 1.0, 0.9)  # the most composite answers, but add below 0.8 x 0.8
    a, b, c = cand(0.7, 0.7, 0.9, 0.5), cand(0.6, 0.65, 0.8, 0.5), cand(0.9, 0.8, 1.0, 0.6)
    assert pick([lost_add, a, b, c], experts, 0.8) is c
    assert pick([lost_add, a, b], experts, 0.8) is b  # equal on both: the lower loss
    assert pick([lost_add, a, b, c], experts, 0.0) is lost_add
    assert pick([lost_add], experts, 0.8) is lost_add  # nothing keeps them: still a pick
    # exactly 80%: 44 of 60 against an expert's 55 of 60 (0.8 * (55 / 60) > 44 / 60 in floats)
    edge = cand(1.0, 44 / 60, 1.0, 0.1)
    assert pick([lost_add, edge], {"add": 55 / 60, "final": 1.0}, 0.8) is edge
