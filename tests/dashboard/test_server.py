"""The dashboard app without a browser: catalog, CSRF, Host checks, export, layer view."""

from __future__ import annotations

import time

import pytest
import yaml

from evomerge.dashboard import server
from evomerge.dashboard.catalog import Catalog, driver_state, layer_view, study_overview
from evomerge.dashboard.server import create_app
from evomerge.engine.recipe import load_recipe
from evomerge.errors import ConfigError


@pytest.fixture()
def client(stopped_study):
    results, url = stopped_study
    app = create_app(Catalog(results=results))
    return app.test_client(), app.config["CSRF_TOKEN"], url


def test_study_list_and_overview(stopped_study):
    results, url = stopped_study
    cat = Catalog(results=results)
    assert cat.urls() == [url]
    [(u, study)] = cat.studies()
    row = study_overview(u, study)
    assert (row["name"], row["done"], row["budget"], row["running"]) == ("dash", 5, 12, 0)
    assert row["driver"] == "stopped (interrupted)" and row["launched_via"] == "local"
    assert row["best"] is not None


def test_driver_state_reads_heartbeats(stopped_study):
    _, study = Catalog(results=stopped_study[0]).studies()[0]
    info = dict(study.user_attrs["evomerge_driver"], state="running", host="elsewhere")
    study.set_user_attr("evomerge_driver", info)
    assert driver_state(study, now=info["heartbeat"] + 5) == "running"
    assert driver_state(study, now=info["heartbeat"] + 3600) == "dead"


def test_layer_view_shows_sources_and_coefficients(stopped_study):
    _, study = Catalog(results=stopped_study[0]).studies()[0]
    t = next(t for t in study.trials if t.values is not None)
    view = layer_view(study, t.number)
    layers = [r for r in view["rows"] if r["layer"] != "embed/head"]
    assert [r["layer"] for r in layers] == list(range(study.user_attrs["evomerge_num_layers"]))
    assert "weight[math].all" in view["header"] and "density[lang].all" in view["header"]
    for r in layers:
        assert r["source"] == t.params[f"swap.g{r['group']}"]
        if r["source"] == "merge":
            i = view["header"].index("weight[math].all")
            assert r["values"][i] == t.params[f"weight.math.g{r['group']}.all"]
        else:
            assert all(v is None for v in r["values"])


def test_pages_render(client):
    c, _, url = client
    page = c.get("/").get_data(as_text=True)
    assert "dash" in page and "5 / 12" in page
    r = c.get("/study", query_string={"storage": url, "name": "dash"})
    assert r.status_code == 200 and 'name="csrf"' in r.get_data(as_text=True)
    data = c.get("/api/study", query_string={"storage": url, "name": "dash"}).get_json()
    assert len(data["trials"]) >= 5 and data["front"]["data"][1]["name"] == "Pareto front"
    assert len(data["history"]["x"]) == 5


def test_unknown_storage_is_refused(client):
    c, _, _ = client
    r = c.get("/api/study", query_string={"storage": "sqlite:////etc/other.db", "name": "dash"})
    assert r.status_code == 404


@pytest.mark.parametrize("case", ["no token", "wrong token", "cross origin"])
def test_posts_need_token_and_same_origin(client, case):
    c, token, url = client
    form = {"storage": url, "name": "dash", "trial": "0", "csrf": token}
    headers = {}
    if case == "no token":
        del form["csrf"]
    elif case == "wrong token":
        form["csrf"] = "x" * len(token)
    else:
        headers["Origin"] = "http://evil.example"
    for path in ("/export", "/resume"):
        assert c.post(path, data=form, headers=headers).status_code == 403


def test_foreign_host_header_is_refused(client):
    c, _, _ = client
    assert c.get("/", headers={"Host": "attacker.example:8080"}).status_code == 421
    assert c.get("/", headers={"Host": "localhost:8080"}).status_code == 200


def test_export_returns_the_recipe(client, stopped_study):
    c, token, url = client
    _, study = Catalog(results=stopped_study[0]).studies()[0]
    number = next(t.number for t in study.trials if t.values is not None)
    r = c.post("/export", data={"storage": url, "name": "dash", "trial": str(number), "csrf": token})
    assert r.status_code == 200 and "attachment" in r.headers["Content-Disposition"]
    doc = yaml.safe_load(r.get_data(as_text=True))
    assert doc["evomerge"]["trial"] == number
    recipe = load_recipe(doc)
    assert recipe == load_recipe(study.trials[number].user_attrs["recipe"]).model_copy(
        update={"evomerge": recipe.evomerge})
    bad = c.post("/export", data={"storage": url, "name": "dash", "trial": "999", "csrf": token})
    assert bad.status_code == 400


def test_resume_refused_while_a_driver_runs(client, stopped_study):
    c, token, url = client
    _, study = Catalog(results=stopped_study[0]).studies()[0]
    study.set_user_attr("evomerge_driver", {"state": "running", "host": "elsewhere", "pid": 1,
                                            "heartbeat": time.time()})
    r = c.post("/resume", data={"storage": url, "name": "dash", "csrf": token})
    assert r.status_code == 303 and "Not+resumed" in r.headers["Location"]


def test_journal_studies_are_found_and_served(mini_zoo, tmp_path):
    """A study in a journal file (the Slurm default) is listed beside SQLite ones."""
    from search.spaces import space_dict

    from evomerge.commands import search

    results = tmp_path / "results"
    path = tmp_path / "j.yaml"
    path.write_text(yaml.safe_dump(space_dict(mini_zoo, name="jour", budget={"trials": 3})))
    url = f"journal://{(results / 'jour' / 'journal.log').resolve()}"
    search(str(path), storage=url, results=str(results))
    cat = Catalog(results=results)
    assert cat.urls() == [url]
    row = study_overview(*cat.find("jour"))
    assert (row["name"], row["done"], row["driver"]) == ("jour", 3, "stopped (budget)")
    app = create_app(cat)
    data = app.test_client().get("/api/study", query_string={"storage": url, "name": "jour"})
    assert data.status_code == 200 and len(data.get_json()["trials"]) >= 3


def test_taken_port_is_one_clear_error(tmp_path, capsys):
    import socket

    from evomerge.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["dashboard", "--results", str(tmp_path), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"Cannot serve on 127.0.0.1:{port}" in err and err.count("\n") == 1


TOKEN = "t0ken-" + "a" * 26


@pytest.fixture()
def public(stopped_study):
    """The app as served on 0.0.0.0 with an access token."""
    results, url = stopped_study
    app = create_app(Catalog(results=results), host="0.0.0.0", token=TOKEN)
    return app.test_client(), app.config["CSRF_TOKEN"], url


def _requests(url: str, csrf: str) -> list[tuple[str, str, dict]]:
    q = {"storage": url, "name": "dash"}
    return [("GET", "/", {}), ("GET", "/study", q), ("GET", "/api/study", q),
            ("GET", "/api/layers", {**q, "trial": "0"}), ("GET", "/static/plotly.min.js", {}),
            ("POST", "/export", {**q, "trial": "0", "csrf": csrf}),
            ("POST", "/resume", {**q, "csrf": csrf})]


@pytest.mark.parametrize("given,status", [(None, 401), ("w" * len(TOKEN), 403),
                                          (TOKEN[:-1], 403)])
def test_off_loopback_every_request_needs_the_token(public, given, status):
    c, csrf, url = public
    for method, path, params in _requests(url, csrf):
        if given is not None:
            c.set_cookie(server.COOKIE, given)
        r = (c.get(path, query_string=params) if method == "GET"
             else c.post(path, data=params))
        assert r.status_code == status, (method, path)


def test_right_token_works_then_the_cookie_carries_it(public, stopped_study):
    c, csrf, url = public
    first = c.get("/", query_string={"token": TOKEN})
    assert first.status_code == 200 and "dash" in first.get_data(as_text=True)
    cookie = first.headers["Set-Cookie"]
    assert f"{server.COOKIE}={TOKEN}" in cookie and "HttpOnly" in cookie
    for method, path, params in _requests(url, csrf)[:-1]:  # cookie only, no ?token=
        r = (c.get(path, query_string=params) if method == "GET" else c.post(path, data=params))
        assert r.status_code == 200, (method, path)
    assert c.get("/", query_string={"token": TOKEN},  # off loopback, any Host name is served
                 headers={"Host": "203.0.113.7:8080"}).status_code == 200


def test_token_rules(monkeypatch):
    monkeypatch.delenv(server.TOKEN_ENV, raising=False)
    assert server.access_token("127.0.0.1", None) is None  # loopback unchanged
    generated = server.access_token("0.0.0.0", None)
    assert len(generated) >= 32 and generated != server.access_token("0.0.0.0", None)
    monkeypatch.setenv(server.TOKEN_ENV, TOKEN)
    assert server.access_token("0.0.0.0", None) == TOKEN
    assert server.access_token("127.0.0.1", None) == TOKEN  # an explicit token is always used
    with pytest.raises(ConfigError, match="has 5 characters; use at least 16"):
        server.access_token("0.0.0.0", "short")
    with pytest.raises(ConfigError, match="needs an access token"):
        create_app(Catalog(results="nowhere"), host="0.0.0.0")


def test_public_dashboard_prints_its_token_url(tmp_path):
    """`--host 0.0.0.0` without a token: a generated one, printed in the URL, which works."""
    import re
    import socket
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in __import__("os").environ.items() if k != server.TOKEN_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "evomerge", "dashboard", "--host", "0.0.0.0",
                             "--port", str(port), "--results", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = proc.stdout.readline()
        token = re.search(r"\?token=([\w-]+) ", line).group(1)
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/?token={token}") as r:
                    assert r.status == 200
                break
            except urllib.error.URLError as exc:
                if getattr(exc, "code", None):
                    raise
                time.sleep(0.1)
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_dfs_study_shows_its_paths(mini_zoo, tmp_path):
    """A data-flow study: the layer view is the path (model, layer, scale per step) and the
    front's hover text lists the steps."""
    from search.spaces import space_dict

    from evomerge.dashboard.server import study_payload
    from evomerge.engine.paths import recipe_path
    from evomerge.search.driver import run_search
    from evomerge.search.space import load_space

    space = load_space(space_dict(mini_zoo, name="dfs", method=None, parameters={},
                                  budget={"trials": 4}, dfs={"repeats": 2}))
    run_search(space, results_root=tmp_path)
    [(_, study)] = Catalog(results=tmp_path).studies()
    alias = {p: a for a, p in space.models.items()}
    for t in study.trials:
        view = layer_view(study, t.number)
        path = recipe_path(load_recipe(t.user_attrs["recipe"]))
        assert [(r["source"], r["values"]) for r in view["rows"]] == [
            (alias[s.model], [s.layer, s.scale]) for s in path]
    hover = study_payload(study)["front"]["data"][1]["text"]  # the front's points
    assert hover and all("<br>path of " in h for h in hover)


def test_study_records_are_data_for_the_pages(stopped_study):
    """A layer count edited to 10**8 made /api/study allocate per layer (a 500 with a
    MemoryError); a study name with a newline made /export a 500 (a header may not hold it)."""
    import sqlite3

    results, url = stopped_study
    _, study = Catalog(results=results).studies()[0]
    number = next(t.number for t in study.trials if t.values is not None)
    study.set_user_attr("evomerge_num_layers", 10**8)
    app = create_app(Catalog(results=results))
    c, token = app.test_client(), app.config["CSRF_TOKEN"]
    for path in ("/api/study", "/api/layers"):
        r = c.get(path, query_string={"storage": url, "name": "dash", "trial": str(number)})
        assert r.status_code == 404 and "records &#39;100000000&#39; source layers" in r.get_data(
            as_text=True), (path, r.status_code)
    assert c.get("/").status_code == 200
    study.set_user_attr("evomerge_num_layers", 2)
    with sqlite3.connect(url.removeprefix("sqlite:///")) as con:
        con.execute("UPDATE studies SET study_name = ? WHERE study_name = 'dash'",
                    ('zm";\nSet-Cookie: a=b',))
    app = create_app(Catalog(results=results))
    c, token = app.test_client(), app.config["CSRF_TOKEN"]
    r = c.post("/export", data={"storage": url, "name": 'zm";\nSet-Cookie: a=b',
                                "trial": str(number), "csrf": token})
    assert r.status_code == 200, r.status_code
    assert r.headers["Content-Disposition"] == f'attachment; filename="trial{number}.yaml"'
    assert "Set-Cookie" not in r.headers
