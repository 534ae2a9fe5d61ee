"""Run folders of `mope compress`: what may be used as ``--out``, what ``--restart`` may delete, and which
recipe changes a resumed run accepts.

- ``--out`` is absent, empty, or holds the ``state.json`` of a mope run (:func:`check_run_dir`).
- ``--restart`` (:func:`clear_run`) deletes only the entries a run writes (:data:`RUN_FILES`) from a folder
  whose ``state.json`` is a mope run's; anything else in it is kept and reported.
- A changed recipe resumes when every changed field is in :data:`REPORT_FIELDS` (they only feed the final
  report stage, which then runs again) or :data:`FREE_FIELDS` (they change no result); any other change is
  refused, naming the fields.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..atomic import atomic_write_text
from ..errors import MopeError
from .recipe import Recipe

STATE = "state.json"
KIND = "mope-compress-run"
#: Every top-level entry a run writes (glob patterns); ``--restart`` deletes these and nothing else.
RUN_FILES = ("state.json", "report.json", "metrics.jsonl", "plan.json", "plan_*.json", "scores_*.json",
             "config.json", "model.safetensors", "stages", ".model-tmp", ".*.tmp-*")
#: Recipe fields only the final ``report`` stage reads: changing them re-runs just that stage.
REPORT_FIELDS = ("name", "data.test", "data.test_split")
#: Recipe fields that change no result (how often a checkpoint is written).
FREE_FIELDS = ("train.checkpoint_every", "depth_train.checkpoint_every")


class RunDirError(MopeError, ValueError):
    """A ``--out`` that is not (or no longer) a usable mope run folder."""


def read_state(out: Path) -> dict[str, Any] | None:
    """The parsed ``state.json`` of run folder ``out`` (None when there is none); a damaged one is an error
    naming the file and the way out."""
    path = Path(out) / STATE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path} is damaged ({e}), so the run in {out} cannot be resumed or recognised: restore "
                          f"the file, or remove the folder yourself and rerun (or pick a new --out)") from None
    if not (isinstance(data, dict) and isinstance(data.get("recipe"), dict) and isinstance(data.get("done"), dict)):
        raise RunDirError(f"{path} is not the state of a mope compress run (no 'recipe' and 'done' records); "
                          "choose another --out")
    return data


def check_run_dir(out: Path) -> dict[str, Any] | None:
    """Refuse an ``--out`` that is a file, or a non-empty folder without a mope run's ``state.json``;
    returns the state (None for a new run)."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise RunDirError(f"--out {out} is {'a symbolic link' if out.is_symlink() else 'a file'}, not a run folder; "
                          "choose another --out")
    if not out.exists():
        return None
    state = read_state(out)
    if state is None:
        names = sorted(p.name for p in out.iterdir())
        if names:
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            raise RunDirError(f"--out {out} already holds {shown} but no {STATE} of a mope compress run; mope "
                              "only writes runs into a new or empty folder (or resumes one it started): choose "
                              "another --out")
    return state


def clear_run(out: Path) -> list[str]:
    """``--restart``: delete what a previous run wrote in ``out`` (only if it holds a mope run's ``state.json``);
    returns the names of the entries kept because the run did not write them."""
    out = Path(out)
    state = check_run_dir(out)
    if state is None:
        if out.exists():
            raise RunDirError(f"--restart: {out} holds no {STATE}, so it is not a mope run to clear")
        return []
    kept = []
    for p in sorted(out.iterdir()):
        if any(fnmatch.fnmatchcase(p.name, pat) for pat in RUN_FILES):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        else:
            kept.append(p.name)
    return kept


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are leaves)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else k))
    return out


def recipe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted names of the recipe fields that differ (a whole sub-mapping set or unset counts as its name)."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, object()) != b.get(k, object()))


def resumable(changes: list[str]) -> tuple[list[str], bool]:
    """``(blocking fields, report stage must rerun)`` for a list of changed fields."""
    blocking = [c for c in changes if c not in REPORT_FIELDS and c not in FREE_FIELDS]
    return blocking, any(c in REPORT_FIELDS for c in changes)


@dataclass
class RunState:
    """Which stages are finished and how long each took (``state.json``)."""

    path: Path
    done: dict[str, float] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, out: Path, recipe: Recipe, restart: bool = False,
             log: Callable[[str], None] = print) -> "RunState":
        """The state of run folder ``out`` for ``recipe``: a new run when ``out`` is absent or empty (or with
        ``restart``), else the recorded one. A recipe changed only in fields later stages read resumes
        (:mod:`.runs`: the report stage runs again); any other change is refused, naming the fields."""
        path, new = out / STATE, recipe.model_dump(mode="json")
        data = check_run_dir(out)
        if data is None or restart:
            return cls(path, {}, new)
        changes = recipe_changes(data["recipe"], new)
        blocking, rerun_report = resumable(changes)
        if blocking:
            shown = ", ".join(blocking[:6]) + (f" and {len(blocking) - 6} more" if len(blocking) > 6 else "")
            raise RunDirError(f"{out} holds a run of a different recipe ({data['recipe'].get('name')!r}): {shown} "
                                f"changed, which finished stages already used; use --restart to start over in "
                                f"{out}, or a new --out (a change to only {', '.join(REPORT_FIELDS + FREE_FIELDS)} "
                                "resumes)")
        done = dict(data["done"])
        if changes:
            if rerun_report:
                done.pop("report", None)
            log(f"recipe changed: {', '.join(changes)}; the finished stages do not depend on "
                f"{'these' if len(changes) > 1 else 'it'}, resuming" + (" (the report runs again)" if rerun_report
                                                                        else ""))
        return cls(path, done, new)

    def finish(self, stage: str, seconds: float) -> None:
        self.done[stage] = round(seconds, 2)
        atomic_write_text(self.path, json.dumps({"kind": KIND, "recipe": self.recipe, "done": self.done},
                                                indent=1))
