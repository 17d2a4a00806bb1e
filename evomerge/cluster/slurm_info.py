"""What Slurm says about jobs and nodes, read robustly: ``scontrol --json`` where the
installed Slurm has it, else ``scontrol show … -o`` parsed as ``Key=value`` fields whose
values may contain spaces (a job name, a working directory, a drain reason)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from typing import Any

from evomerge.errors import ConfigError

__all__ = ["parse_fields", "scontrol_show", "node_address", "job_fields", "launch_jobs",
           "active_jobs", "refuse_active_jobs", "ACTIVE_STATES"]

# the states of a job Slurm may still start or is running: its driver is yet to come or alive
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                 "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT"}

# a field starts where "Key=" follows whitespace (keys are CamelCase words, maybe with "/")
_KEY = re.compile(r"(?:(?<=\s)|^)([A-Z][A-Za-z0-9_/:]*)=")

# JSON (Slurm's data_parser) names of the text fields evomerge reads
_JSON_NAMES = {
    "job": {"JobId": "job_id", "JobName": "name", "JobState": "job_state",
            "Reason": "state_reason", "NodeList": "nodes", "Restarts": "restart_cnt",
            "ExitCode": "exit_code", "RunTime": "run_time"},
    "node": {"NodeName": "name", "NodeAddr": "address", "NodeHostName": "hostname",
             "State": "state", "Reason": "reason"},
}


def parse_fields(line: str) -> dict[str, str]:
    """``Key=value`` fields of one ``scontrol show … -o`` line; a value runs up to the next
    key, so ``Reason=Not responding [root@2026]`` stays whole."""
    starts = list(_KEY.finditer(line))
    out = {}
    for m, nxt in zip(starts, [*starts[1:], None]):
        out[m.group(1)] = line[m.end():nxt.start() if nxt else len(line)].strip()
    return out


def _flat(v: Any) -> str:
    """A JSON field as scontrol's text would show it (lists joined, numbers unwrapped)."""
    if isinstance(v, list):
        return ",".join(_flat(x) for x in v)
    if isinstance(v, dict):
        if "number" in v:  # {"set": true, "infinite": false, "number": 3}
            return str(v["number"])
        if "return_code" in v:  # exit_code: {"status": [...], "return_code": {...}}
            return f"{_flat(v['return_code'])}:{_flat(v.get('signal', {}).get('id', 0))}"
        return json.dumps(v)
    return str(v)


def from_json(kind: str, doc: dict[str, Any]) -> list[dict[str, str]]:
    """Records of a ``scontrol --json show`` document under the text field names."""
    names = _JSON_NAMES[kind]
    return [{text: _flat(rec[key]) for text, key in names.items() if key in rec}
            for rec in doc.get(f"{kind}s", [])]


def scontrol_show(kind: str, name: str) -> list[dict[str, str]]:
    """``scontrol show KIND NAME`` as records of fields (empty when Slurm does not know it)."""
    if shutil.which("scontrol") is None:
        return []
    proc = subprocess.run(["scontrol", "--json", "show", kind, name], capture_output=True,
                          text=True, check=False)
    if proc.returncode == 0:
        try:
            return from_json(kind, json.loads(proc.stdout))
        except (ValueError, KeyError, TypeError):
            pass  # not JSON after all: read the text form
    proc = subprocess.run(["scontrol", "show", kind, "-o", name], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        return []
    return [parse_fields(line) for line in proc.stdout.splitlines() if "=" in line]


def node_address(node: str) -> str:
    """The address Slurm uses to reach ``node`` (its NodeAddr), e.g. for a Ray head."""
    for rec in scontrol_show("node", node):
        if rec.get("NodeAddr"):
            return rec["NodeAddr"]
    raise LookupError(f"Slurm knows no address for node {node!r}")


def job_fields(job_id: str) -> dict[str, str]:
    """``scontrol show job`` fields; ``{"JobState": "UNKNOWN"}`` once Slurm forgot the job."""
    if shutil.which("scontrol") is None:
        return {"JobState": "UNKNOWN", "Reason": "scontrol not found"}
    recs = [r for r in scontrol_show("job", str(job_id)) if "JobState" in r]
    return recs[0] if recs else {"JobState": "UNKNOWN", "Reason": "not known to Slurm"}


_JOB_ID = re.compile(r"[0-9]{1,20}(_[0-9]{1,20})?")


def launch_jobs(launch: Any) -> list[str]:
    """The Slurm job ids a study's launch record names (``evomerge_launch``, via slurm). The
    record is data: anything but a list of job ids names no job."""
    if not isinstance(launch, dict) or launch.get("via") != "slurm":
        return []
    jobs = launch.get("jobs")
    return [j for j in jobs if isinstance(j, str) and _JOB_ID.fullmatch(j)] \
        if isinstance(jobs, list) else []


def active_jobs(launch: Any, skip_own: bool = False) -> list[tuple[str, str]]:
    """(job id, state) of the :func:`launch_jobs` that Slurm may still start or is running;
    with ``skip_own``, less the job this process runs in (``SLURM_JOB_ID``: a job's own
    driver, requeued or not, is not its rival). Without ``scontrol`` none is known."""
    here = os.environ.get("SLURM_JOB_ID") if skip_own else None
    out = []
    for job_id in launch_jobs(launch):
        if job_id == here:
            continue
        # Slurm 24.11+ (JSON) gives a base state and its flags: "PENDING,REQUEUED"
        state = job_fields(job_id)["JobState"]
        if set(state.split(",")) & ACTIVE_STATES:
            out.append((job_id, state))
    return out


def refuse_active_jobs(name: str, launch: Any, skip_own: bool = True) -> None:
    """Refuse a second driver for study ``name`` while one of its Slurm jobs is queued or
    running: the job would start on a study another driver holds (and be refused there after
    waiting in the queue), or the two would take turns on one budget. A job's own driver
    (``skip_own``) passes; a submit never does (it would queue a second job beside it)."""
    jobs = active_jobs(launch, skip_own)
    if jobs:
        job_id, state = jobs[0]
        raise ConfigError(f"Study {name!r} already has Slurm job {job_id} ({state}); "
                          f"wait for it or `scancel {job_id}` first.")
