"""``evomerge dashboard``: a local web page over the studies of one or more storages.

    serve(results="results")            # http://127.0.0.1:8080

Pages: the study list (``/``) and one study (``/study?storage=URL&name=NAME``): Pareto plot
(hover shows the recipe, click selects the trial), best-so-far curve, sortable trial table,
per-layer view of the selected recipe, and two POST actions, resume and export.

Security: binds 127.0.0.1 by default and answers only requests whose Host is the address it
serves (no DNS rebinding); POST actions need the per-process CSRF token embedded in the page
(a cross-site page cannot read it) and a same-origin ``Origin`` when the browser sends one;
storages come only from the server's own list, never from a request; nothing is unpickled.
Every response forbids framing (``X-Frame-Options: DENY``, CSP ``frame-ancestors 'none'``: a
page on another port cannot put the Resume button under a visitor's click), MIME sniffing
and scripts other than the dashboard's own files. Resume starts this installation's
evomerge, never code or a directory the study names (:mod:`evomerge.dashboard.actions`).
Bound to any other address it requires an access token on every request (``?token=`` once,
then an HttpOnly cookie; compared in constant time), as Jupyter does: whoever can reach the
port could otherwise resume studies and submit Slurm jobs.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from evomerge.dashboard.catalog import Catalog, layer_view, study_overview, trial_rows
from evomerge.errors import ConfigError, EvomergeError
from evomerge.names import is_safe_name
from evomerge.search.records import StudyRecord

__all__ = ["create_app", "serve"]

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
TOKEN_ENV = "EVOMERGE_DASHBOARD_TOKEN"
COOKIE = "evomerge_token"
MIN_TOKEN = 16
# On every response. No page of another origin may frame the dashboard (a click there would
# press Resume: clickjacking); only the dashboard's own files run as scripts (plotly's
# inline styles stay allowed); nothing is MIME-sniffed; no URL (with its token) is sent to
# another origin. "same-origin", not "no-referrer": under no-referrer Chromium sends
# ``Origin: null`` with the dashboard's own form posts, which the same-origin check refuses.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def access_token(host: str, given: str | None) -> str | None:
    """The token the dashboard requires: ``given`` (``--token``) or ``$EVOMERGE_DASHBOARD_TOKEN``;
    generated when the dashboard binds a non-loopback address and none was given; None on
    loopback without one. A token shorter than 16 characters is refused."""
    import os

    token = given if given is not None else os.environ.get(TOKEN_ENV)
    if token is None:
        return None if host in LOOPBACK else secrets.token_urlsafe(24)
    if len(token) < MIN_TOKEN:
        raise ConfigError(f"The dashboard access token (--token or ${TOKEN_ENV}) has "
                          f"{len(token)} characters; use at least {MIN_TOKEN} (or leave it "
                          "unset to get a generated one).")
    return token


def _hover(space: Any, study: Any):
    """Hover lines of a front point: the recipe in brief (method, source per layer group)."""
    from evomerge.search.genome import make_genome

    genome = make_genome(space, StudyRecord(study).num_layers)
    if space.dfs is not None:
        alias = {p: a for a, p in space.models.items()}

        def path(t: Any) -> list[str]:
            steps = [f"{alias[s.model]}.{s.layer}" + (f"×{s.scale:.2f}" if s.scale != 1 else "")
                     for s in genome.path(t.params)]
            return [f"path of {len(steps)} layers:",
                    *(" ".join(steps[i:i + 6]) for i in range(0, len(steps), 6))]
        return path

    def lines(t: Any) -> list[str]:
        out = [f"method: {space.method_name(t.params)}"]
        for g, (lo, hi) in enumerate(genome.groups):
            source = t.params.get(f"swap.g{g}", "merge")
            weights = [f"{a}={t.params[k]:.2f}" for a in space.models
                       if (k := f"weight.{a}.g{g}.{genome.parts[0]}") in t.params]
            detail = " ".join(weights) if source == "merge" and weights else ""
            out.append(f"layers {lo}-{hi - 1}: {source} {detail}".rstrip())
        return out

    return lines


def study_payload(study: Any) -> dict[str, Any]:
    """The JSON a study page draws: plots (plotly JSON), trial table, objectives."""
    from evomerge.search.front import archive_rows, best_so_far, front_figure, front_trials
    from evomerge.search.ledger import space_of

    space = space_of(study)
    front = front_trials(study, space)
    fig = front_figure(study, space, front, hover=_hover(space, study))
    fig.update_layout(margin={"t": 30}, height=420, clickmode="event",
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0})
    from evomerge.search.objectives import weighted_loss

    xs, best = best_so_far(study, space)
    ys = [weighted_loss(t.values, space.objectives) for t in best]
    return {
        "objectives": [o.key for o in space.objectives],
        "front": json.loads(fig.to_json()),
        "front_trials": [t.number for t in front],
        "history": {"x": xs, "y": ys},
        "trials": trial_rows(study),
        "archive": archive_rows(study, space),  # map_elites: one row per filled cell
    }


def create_app(catalog: Catalog, host: str = "127.0.0.1", token: str | None = None):
    """The Flask app over ``catalog``; with ``token``, every request must carry it (query
    ``?token=`` or the cookie set on the first visit). Off loopback a token is required."""
    if host not in LOOPBACK and not token:
        raise ConfigError(f"Serving the dashboard on {host} needs an access token (--token or "
                          f"${TOKEN_ENV}); only 127.0.0.1 may be served without one.")
    from flask import Flask, Response, abort, jsonify, redirect, render_template, request

    app = Flask(__name__)
    csrf = secrets.token_urlsafe(32)
    app.config["CSRF_TOKEN"] = csrf

    def _access() -> None:
        if token is None:
            return
        given = request.args.get("token") or request.cookies.get(COOKIE)
        if not given:
            abort(401, "This dashboard needs its access token: open the URL it printed "
                       "(…/?token=…).")
        if not secrets.compare_digest(given.encode(), token.encode()):
            abort(403, "Wrong access token.")

    @app.after_request
    def _remember(resp: Any) -> Any:
        if token is not None and request.args.get("token") and resp.status_code < 400:
            resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        resp.headers.update(SECURITY_HEADERS)
        return resp

    @app.before_request
    def _guard() -> None:
        hostname = urlsplit(f"//{request.host}").hostname or ""
        if host in LOOPBACK and hostname not in LOOPBACK:
            abort(421, "This dashboard only answers requests addressed to localhost.")
        _access()
        if request.method == "POST":
            origin = request.headers.get("Origin")
            if origin and urlsplit(origin).netloc != request.host:
                abort(403, "Cross-site request refused.")
            if not secrets.compare_digest(request.form.get("csrf", ""), csrf):
                abort(403, "Missing or wrong CSRF token: reload the page and try again.")

    def find() -> tuple[str, Any]:
        url, name = request.values.get("storage"), request.values.get("name")
        if not name or not url:
            abort(404, "Unknown storage or study.")
        try:
            return catalog.find(name, url)
        except EvomergeError as exc:
            abort(404, str(exc))

    @app.get("/")
    def index():
        rows = [study_overview(url, study) for url, study in catalog.studies()]
        return render_template("index.html", rows=rows, urls=catalog.urls(),
                               msg=request.args.get("msg"))

    @app.get("/study")
    def study_page():
        url, study = find()
        return render_template("study.html", info=study_overview(url, study), csrf=csrf,
                               msg=request.args.get("msg"))

    @app.get("/api/study")
    def study_api():
        try:
            return jsonify(study_payload(find()[1]))
        except EvomergeError as exc:  # a study record that is not what evomerge writes
            abort(404, str(exc))

    @app.get("/api/layers")
    def layers_api():
        try:
            return jsonify(layer_view(find()[1], int(request.args.get("trial", "-1"))))
        except (EvomergeError, ValueError) as exc:
            abort(404, str(exc))

    @app.post("/export")
    def export():
        from evomerge.dashboard.actions import export_yaml

        _, study = find()
        try:
            number = int(request.form.get("trial", ""))
            text = export_yaml(study, number)
        except (EvomergeError, ValueError) as exc:
            abort(400, str(exc))
        # the study's name is data: only a safe one goes into the header (a newline made a 500)
        safe = is_safe_name(study.study_name)
        name = f"{study.study_name}-trial{number}.yaml" if safe else f"trial{number}.yaml"
        return Response(text, mimetype="application/x-yaml",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.post("/resume")
    def resume():
        from evomerge.dashboard.actions import resume_study

        url, study = find()
        try:
            started = resume_study(study, url, catalog.results)
            msg = (f"Submitted Slurm job {started['job_id']}." if started["via"] == "slurm"
                   else f"Resumed locally (pid {started['pid']}, log {started['log']}).")
        except EvomergeError as exc:
            msg = f"Not resumed: {exc}"
        return redirect("/study?" + urlencode({"storage": url, "name": study.study_name,
                                               "msg": msg}), code=303)

    @app.get("/static/plotly.min.js")
    def plotly_js():
        from plotly.offline import get_plotlyjs

        return Response(get_plotlyjs(), mimetype="application/javascript",
                        headers={"Cache-Control": "max-age=86400"})

    @app.template_filter("ago")
    def _ago(stamp: float | None) -> str:
        import time

        if stamp is None:
            return "-"
        s = time.time() - stamp
        return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago" if s < 7200 else \
            f"{s / 3600:.1f} h ago"

    return app


def serve(storages: list[str] | None = None, results: str | Path = "results",
          host: str = "127.0.0.1", port: int = 8080, token: str | None = None) -> None:
    """Serve the dashboard until interrupted (waitress, a pure-Python WSGI server). Off
    loopback an access token is required: ``token``, ``$EVOMERGE_DASHBOARD_TOKEN`` or a
    generated one, printed in the URL."""
    from waitress import serve as waitress_serve

    token = access_token(host, token)
    catalog = Catalog(storages, results)
    app = create_app(catalog, host, token)
    query = f"?token={token}" if token else ""
    print(f"evomerge dashboard on http://{host}:{port}/{query} ({len(catalog.urls())} "
          "storages; Ctrl-C stops)", flush=True)
    try:
        waitress_serve(app, host=host, port=port, threads=4, _quiet=True)
    except OSError as exc:  # port taken, address not on this machine
        raise ConfigError(f"Cannot serve on {host}:{port}: {exc.strerror or exc}; choose "
                          "another --port or --host.") from None
