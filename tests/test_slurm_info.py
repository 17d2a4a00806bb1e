"""Reading scontrol: text fields whose values contain spaces, and the --json form."""

from __future__ import annotations

from evomerge.cluster.slurm_info import from_json, parse_fields

LINE = ("JobId=42 JobName=evomerge-my study UserId=root(0) JobState=PENDING "
        "Reason=Not responding [root@2026-12-01T02:00:00] Restarts=1 "
        "WorkDir=/home/a b/work NodeList=node[1-2] ExitCode=0:0")


def test_text_fields_keep_values_with_spaces():
    f = parse_fields(LINE)
    assert f["JobName"] == "evomerge-my study"
    assert f["Reason"] == "Not responding [root@2026-12-01T02:00:00]"
    assert f["WorkDir"] == "/home/a b/work"
    assert (f["JobState"], f["Restarts"], f["NodeList"], f["ExitCode"]) == (
        "PENDING", "1", "node[1-2]", "0:0")
    assert parse_fields("NodeName=node1 Arch=x86_64 NodeAddr=10.0.0.5 NodeHostName=n 1")[
        "NodeAddr"] == "10.0.0.5"


def test_json_records_use_the_text_names():
    jobs = {"jobs": [{"job_id": 42, "name": "evomerge-my study", "job_state": ["PENDING"],
                      "state_reason": "Not responding", "nodes": "node[1-2]",
                      "restart_cnt": 1,
                      "exit_code": {"status": ["SUCCESS"], "return_code": {"set": True,
                                                                           "number": 0}}}]}
    [j] = from_json("job", jobs)
    assert j == {"JobId": "42", "JobName": "evomerge-my study", "JobState": "PENDING",
                 "Reason": "Not responding", "NodeList": "node[1-2]", "Restarts": "1",
                 "ExitCode": "0:0"}
    [n] = from_json("node", {"nodes": [{"name": "node1", "address": "10.77.0.11",
                                        "hostname": "node1", "state": ["IDLE"]}]})
    assert (n["NodeName"], n["NodeAddr"], n["State"]) == ("node1", "10.77.0.11", "IDLE")


def test_a_job_state_with_flags_is_active_and_a_launch_record_is_data(monkeypatch):
    """Slurm 24.11+ reports a base state and its flags ("PENDING,REQUEUED" from JSON
    ``["PENDING", "REQUEUED"]``): still an active job. A launch record that is not a list of
    job ids names no job (no scontrol call per character of a string)."""
    from evomerge.cluster import slurm_info
    from evomerge.cluster.slurm_info import active_jobs, from_json

    doc = {"jobs": [{"job_id": 7, "job_state": ["PENDING", "REQUEUED"]}]}
    state = from_json("job", doc)[0]["JobState"]
    assert state == "PENDING,REQUEUED"
    asked = []

    def fields(job_id):
        asked.append(job_id)
        return {"JobState": state}
    monkeypatch.setattr(slurm_info, "job_fields", fields)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    launch = {"via": "slurm", "jobs": ["7", "8_1"]}
    assert active_jobs(launch) == [("7", state), ("8_1", state)]
    assert active_jobs(launch, skip_own=True) == [("8_1", state)]
    for bad in ("abc", ["x"], {"via": "slurm", "jobs": 5}, {"via": "slurm", "jobs": "1234"},
                {"via": "slurm", "jobs": ["1; rm -rf /", 3, None]}):
        assert active_jobs(bad) == []
    assert asked == ["7", "8_1", "8_1"]
