"""What `gen-jax train` does when a run resumes with settings other than it was trained with.

One table, a reason for each key. A key named in neither dict changes what is trained (the
model, the objective, the optimizer, the data and its preprocessing, the batch size, the seed):
such a change is refused unless `--allow_config_change`, since the resumed run would silently
be another experiment (a new batch size, for one, reads the saved data position in batches of
the new size, skipping or repeating examples).
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections

from gen_jax import config as config_lib
from gen_jax.errors import GenJaxError

SPEED_ONLY = "a speed option: the same numbers up to float rounding"
EVALUATION_ONLY = "evaluation only: what is trained does not change"

RECORDED = {  # allowed, appended to the workdir's config_changes.jsonl with the step
    "train.num_steps": "extends (or shortens) the run; a schedule over the steps changes from "
    "the resume step on",
    "train.num_epochs": "the same as train.num_steps, counted in epochs",
    "train.batch_splits": SPEED_ONLY,
    "train.accumulate_gradients": "memory only: " + SPEED_ONLY,
    "model.remat": "memory only: the same gradients up to float rounding (names unchanged)",
    "train.steps_per_call": SPEED_ONLY,
    "data.on_device": SPEED_ONLY,
    "data.streaming": SPEED_ONLY,
    "data.workers": SPEED_ONLY,
    "data.memory_budget": SPEED_ONLY + " (it decides streaming)",
    **{  # a checkpoint restores into any layout: moving a run between device counts
        f"mesh.{key}": "the state's layout over the devices: " + SPEED_ONLY
        for key in ("data", "fsdp", "fsdp_min_size", "rules")
    },
}

FREE = {  # allowed, not recorded: config.json takes the new value
    "train.log_every": "when metrics are logged",
    "train.eval_every": "when the run is evaluated",
    "train.checkpoint_every": "when checkpoints are saved",
    "train.keep_checkpoints": "how many checkpoints are kept",
    "data.eval_split": EVALUATION_ONLY,
    "data.eval_batch_size": EVALUATION_ONLY,
    "data.cache_dir": "where decoded images are cached",
    "data.data_dir": "where the TFDS files are (the dataset is data.name)",
    "data.mirrors": "where canonical files are downloaded from (each checked by its sha256)",
    **{
        f"task.{key}": EVALUATION_ONLY
        for key in (
            "test_flips",
            "test_shift",
            "eval_samples",
            "final_eval_samples",
            "eval_sample_chunk",
            "eval_seed",
            "eval_steps",
            "classifier_workdir",
            "prior_samples",
            "inception_samples",
            "inception_reference",
            "neighbours",
            "sampler",
            "sample_steps",
            "eta",
            "guidance_scale",
            "clip_denoised",
        )
    },
}


SAME_DATA_KEYS = ("data.folder", "data.source")  # free where the examples are the same


def sorted_changes(
    old: ml_collections.ConfigDict, new: ml_collections.ConfigDict, same_data: bool
) -> tuple[dict[str, list], dict[str, list]]:
    """(refused, recorded) changes between the configs `old` and `new` ({key: [old value, new
    value]}); free ones are in neither. `same_data`: the training split's examples
    are those the run was trained on, so a moved `data.folder` is a path, and a `data.source`
    that reads the same copy (e.g. "download" pinning what "auto" chose) a name, both free."""
    refused, recorded = {}, {}
    for key, values in config_lib.changes(old, new).items():
        if key in RECORDED:
            recorded[key] = values
        elif key not in FREE and not (key in SAME_DATA_KEYS and same_data):
            refused[key] = values
    return refused, recorded


def listed(changes: dict[str, list], separator: str = "; ") -> str:
    """`{key: [old, new]}` in words: "key: old -> new" each."""
    return separator.join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())


def refusal(workdir, step: int, refused: dict[str, list]) -> GenJaxError:
    """The error for a resume that would train another experiment."""
    changes = listed(refused, "\n  ")
    return GenJaxError(
        f"{workdir} was trained to step {step} with other settings, and resuming would change "
        f"what is trained:\n  {changes}\nRun the same config again (its config.json), train in a "
        "new --workdir, or pass --allow_config_change to resume with these changes anyway (they "
        "are recorded in config_changes.jsonl)."
    )


CHANGES_RECORD = "config_changes.jsonl"


def history(workdir: str | Path) -> str:
    """The changes a run was resumed with (its `config_changes.jsonl`), in words; "" if none."""
    path = Path(workdir) / CHANGES_RECORD
    if not path.is_file():
        return ""
    lines = path.read_text().splitlines(keepends=True)
    entries = [json.loads(line) for line in lines if line.endswith("\n")]  # whole lines only
    return "; ".join(
        f"at step {entry['step']}, {listed(entry['changes'], ', ')}" for entry in entries
    )
