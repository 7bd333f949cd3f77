"""Recorded runs: finding one ('latest' or an id), reading its row of gptsql.runs, and the checks
every look inside one makes (did it record its activations, does it have that step)."""
from __future__ import annotations

from ..errors import UserError


class NotRecorded(UserError):
    """The run was generated without recording its activations (the CLI says with which flag)."""

    def __init__(self, run_id: int):
        self.run_id = run_id
        super().__init__(f"run {run_id} kept no activations: it was generated with recording off; "
                         "generate its prompt again with recording on")


def resolve_run(conn, run: str | int) -> int:
    """A run id from 'latest' (the newest run of any kind) or a number; fails when it is not there."""
    if str(run).strip().lower() == "latest":
        found = conn.execute("select gptsql.latest_run(null)").fetchone()[0]
        if found is None:
            raise UserError("there are no runs yet; start one with: gptsql generate \"Happy New Year! I wish\"")
        return found
    try:
        run_id = int(str(run))
    except ValueError:
        raise UserError(f"a run is a number or 'latest', not {run!r}") from None
    if not conn.execute("select exists (select from gptsql.run where id = %s)", [run_id]).fetchone()[0]:
        raise UserError(f"there is no run {run_id}; list them with: gptsql runs list")
    return run_id


def run_info(conn, run_id: int) -> dict:
    """The run's row of gptsql.runs, by column name."""
    cur = conn.execute("select * from gptsql.runs where run = %s", [run_id])
    row = cur.fetchone()
    if row is None:
        raise UserError(f"there is no run {run_id}; list them with: gptsql runs list")
    return dict(zip([c.name for c in cur.description], row))


def run_model_id(conn, run_id: int) -> int:
    return conn.execute("select model_id from gptsql.run where id = %s", [run_id]).fetchone()[0]


def recorded_places(conn, run_id: int, info: dict | None = None) -> int:
    """How many places went through the blocks with their activations kept; fails when none did."""
    info = info or run_info(conn, run_id)
    if not info["recorded"]:
        raise NotRecorded(run_id)
    n = conn.execute("select max(place) + 1 from gptsql.residual where run_id = %s", [run_id]).fetchone()[0]
    if not n:
        raise UserError(f"run {run_id} recorded no activations (nothing went through the blocks: "
                        f"status {info['status']}, {info['generated_tokens']} tokens generated)")
    return n


def check_step(run_id: int, info: dict, step: int) -> int:
    """One of the steps (generated tokens, from 1) of the run."""
    n = info["generated_tokens"]
    if not n or not 1 <= step <= n:
        raise UserError(f"run {run_id} has no step {step}: it generated {n} tokens (steps 1 to {n})")
    return step
