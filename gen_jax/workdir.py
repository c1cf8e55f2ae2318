"""A run's workdir: its state, restored from the newest checkpoint that reads (damaged ones moved
aside) or made fresh; the records it keeps (`config.json`, `dataset.json`,
`config_changes.jsonl`, `damaged_checkpoints.jsonl`); the finite-state check before a save; and
`load_state`, which opens a run for inference."""

from __future__ import annotations

import concurrent.futures
import json
import math
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from gen_jax import config as config_lib
from gen_jax import data, parallel, resume_policy, tasks
from gen_jax.atomic import write_text_atomically
from gen_jax.checkpoint import Checkpointer, DamagedCheckpointError
from gen_jax.compiled import RunParts, in_background, run_parts
from gen_jax.errors import GenJaxError, NonFiniteStateError
from gen_jax.tasks.base import init_state


def example_batch(
    split: data.Split, config: ml_collections.ConfigDict, mesh: Mesh
) -> dict[str, jax.Array]:
    """One global training-shaped batch that builds the state: its shapes, and, for a layer
    initialised from data (`models.airbench`'s whitening), its images, spread over the split."""
    local = data.spread_batch(
        split,
        config.data,
        batch_size=config.data.batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return parallel.global_batch(local, mesh)


def fresh_state(parts: RunParts) -> concurrent.futures.Future:
    """The state initialised from the seed (`init_state`, laid out as `parts.state`), made in
    the background."""
    task, config, _, batch, state = parts
    rng, sharding = jax.random.PRNGKey(config.seed), parallel.shardings_of(state)
    return in_background(init_state, task, rng, batch, out_shardings=sharding)


def initial_state(
    parts: RunParts,
    checkpointer: Checkpointer,
    iterator=None,
    step: int | None = None,
    require: bool = False,
    fresh: concurrent.futures.Future | None = None,
):
    """Restore the latest (or given) checkpoint if there is one, else initialise from the seed
    (or take the `fresh` state being initialised in the background: `fresh_state`).

    With `require`, a workdir without checkpoints is an error instead of a fresh start.
    """
    if checkpointer.latest_step() is None and not require:
        fresh = fresh or fresh_state(parts)
        return fresh.result(), iterator
    return checkpointer.restore(parts.state, iterator, step)


def resume(
    parts: RunParts,
    checkpointer: Checkpointer,
    iterator,
    workdir: Path,
    fresh: concurrent.futures.Future | None = None,
):
    """The training run's `initial_state`: from the newest checkpoint that restores completely,
    else the `fresh` state if one is being made.

    Newer ones whose files are damaged are moved to `damaged_checkpoints/` (never deleted), which
    stderr and `damaged_checkpoints.jsonl` (step, where it went, the step resumed at, the error)
    record, so the run continues as if they had never been saved. When no checkpoint restores,
    nothing is moved and the error lists them.
    """
    damaged: list[DamagedCheckpointError] = []
    for step in sorted(checkpointer.all_steps(), reverse=True) or [None]:  # None: a fresh start
        try:
            state, iterator = initial_state(parts, checkpointer, iterator, step, fresh=fresh)
            break
        except DamagedCheckpointError as error:
            damaged.append(error)
    else:
        directory = checkpointer.manager.directory
        raise GenJaxError(
            f"no checkpoint in {directory} can be read, their files are damaged "
            f"({'; '.join(error.reason for error in damaged)}). Nothing was moved or deleted: "
            f"restore them from a backup, or move {directory} elsewhere to train again from "
            "step 0, or use a new --workdir."
        ) from damaged[0]
    for error in damaged:
        moved = checkpointer.move_aside(error.step, workdir / "damaged_checkpoints")
        if moved is None:  # another process moved it and reports it
            continue
        print(
            f"gen-jax: the checkpoint at step {error.step} in {workdir} is damaged "
            f"({error.reason}); moved it to {moved} and resumes at step {int(state.step)}",
            file=sys.stderr,
        )
        record = {
            "step": error.step,
            "moved_to": str(moved.relative_to(workdir)),
            "resumes_at": int(state.step),
            "error": error.reason,
        }
        with open(workdir / "damaged_checkpoints.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")
    return state, iterator


def check_from_step(checkpointer: Checkpointer, step: int) -> None:
    """`gen-jax train --from_step STEP` names a finished checkpoint, or it is an error."""
    saved = checkpointer.all_steps()
    if step not in saved:
        raise GenJaxError(
            f"--from_step {step}: there is no checkpoint at step {step} in "
            f"{checkpointer.manager.directory}; it holds steps {saved}"
        )


def set_aside_after(checkpointer: Checkpointer, step: int, workdir: Path) -> None:
    """Move the checkpoints newer than `step` to `set_aside_checkpoints/` (never deleted), so
    training resumes from `step`: `gen-jax train --from_step STEP`."""
    saved = checkpointer.all_steps()
    for newer in [s for s in saved if s > step]:
        moved = checkpointer.move_aside(newer, workdir / "set_aside_checkpoints")
        if moved is not None:  # process 0 moved it
            print(
                f"gen-jax: --from_step {step}: moved the checkpoint at step {newer} to {moved}",
                file=sys.stderr,
            )


def resume_changes(
    config: ml_collections.ConfigDict,
    workdir: Path,
    step: int,
    identity: str,
    allow_change: bool = False,
) -> dict[str, list]:
    """The changes to record when the run in `workdir` resumes at `step` with `config`
    (`resume_policy`): refused ones raise, unless `allow_change`; free ones are left out.
    `identity`: the training split's, now."""
    saved = config_lib.load(workdir / "config.json", absolute=True)
    before = dataset_record(workdir).get("identity", {}).get(config.data.train_split)
    refused, recorded = resume_policy.sorted_changes(saved, config, before == identity)
    changed = before not in (None, identity) and "data.folder" not in refused
    if changed and config.data.folder:
        # the same settings, other images: files changed in the folder, another subset
        refused["the training split's images (data.folder's files)"] = [before, identity]
    elif changed and before.split("/")[0] != identity.split("/")[0]:
        # data.name from a prepared TFDS copy, then from its canonical files: another order;
        # the identity's first part names the source it trained on ("tfds" or "download")
        trained_on = f"the training split's source (set data.source='{before.split('/')[0]}')"
        refused[trained_on] = [before, identity]
    if refused and not allow_change:
        raise resume_policy.refusal(workdir, step, refused)
    return {**refused, **recorded}


def dataset_record(workdir: Path) -> dict:
    """The run's `dataset.json` as `record_dataset` wrote it ({} before the first start)."""
    path = workdir / "dataset.json"
    return config_lib.read_json(path) if path.is_file() else {}


def saved_iterator_kind(workdir: Path) -> str | None:
    """The kind of data iterator whose positions the run's checkpoints hold (None: unrecorded)."""
    return dataset_record(workdir).get("iterator")


def note_unapplied(config: ml_collections.ConfigDict, workdir: Path, step: int) -> None:
    """Say which settings differ from those of a finished run, which keeps its config.json."""
    saved = config_lib.load(workdir / "config.json", absolute=True)
    changed = config_lib.changes(saved, config)
    if changed:
        listed = resume_policy.listed(changed)
        print(
            f"gen-jax: {workdir} is trained to step {step}, so its config.json stays as it was; "
            f"not applied: {listed}",
            file=sys.stderr,
        )


def record_config(
    config: ml_collections.ConfigDict, workdir: Path, step: int, changed: dict[str, list]
) -> None:
    """Write `config.json`. A run resumed at `step` with `changed` settings (`resume_changes`)
    says so on stderr and appends them to `config_changes.jsonl` (step, old and new value of
    each), so the workdir still tells how every step was trained."""
    if changed:
        listed = resume_policy.listed(changed)
        print(f"gen-jax: {workdir} resumes at step {step} with {listed}", file=sys.stderr)
        with open(workdir / resume_policy.CHANGES_RECORD, "a") as log:
            log.write(json.dumps({"step": step, "changes": changed}) + "\n")
    config_lib.save(config, workdir / "config.json")


def record_dataset(
    workdir: Path, data_config: ml_collections.ConfigDict, splits: dict, iterator_kind: str
) -> None:
    """Write `dataset.json`: what the run trained on (source, image shape, class names, examples
    per split, images skipped as unreadable, in memory or streamed, the kind of iterator whose
    positions its checkpoints hold), so a loaded run can name its classes even where the data
    are gone."""
    train_split = splits["train"]
    record = {
        "source": train_split.source,  # folder:PATH, tfds:NAME VERSION (DIR), download:NAME
        "image_shape": list(train_split.spec.image_shape),
        "class_names": list(train_split.spec.class_names),
        "examples": {data_config[f"{k}_split"]: len(v) for k, v in splits.items()},
        "skipped_unreadable": {
            data_config[f"{k}_split"]: v.spec.skipped for k, v in splits.items()
        },
        "streamed": not isinstance(train_split, data.InMemory),
        "iterator": iterator_kind,
        # which examples, e.g. folder/SHA256/500-of-50000-stratified-0 (data.max_examples)
        "identity": {data_config[f"{k}_split"]: v.identity for k, v in splits.items()},
    }
    write_text_atomically(workdir / "dataset.json", json.dumps(record, indent=2) + "\n")


@jax.jit
def _finite_leaves(state) -> Any:
    """Per floating leaf of the state, whether all its values are finite (one reduction each)."""
    finite = lambda x: jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else True
    return jax.tree.map(finite, state)


def check_finite_state(state, step: int, checkpointer: Checkpointer) -> None:
    """Raise `NonFiniteStateError`, naming the leaves, if the state holds a NaN or an infinity:
    checked before every evaluation and save, so a diverged model is never scored or saved."""
    flags = jax.tree_util.tree_flatten_with_path(jax.device_get(_finite_leaves(state)))[0]
    bad = [jax.tree_util.keystr(path) for path, finite in flags if not finite]
    if bad:
        checkpointer.wait()
        raise NonFiniteStateError(step, bad, checkpointer.latest_step())


def load_state(workdir: str | Path, step: int | None = None):
    """A run's config, task, mesh and restored state (latest or given step) on these devices,
    whatever devices trained it: its `mesh.fsdp` shrunk to its greatest common divisor with
    their number (one device holds the whole state), data parallel over the rest."""
    workdir = Path(workdir)
    config = config_lib.load(workdir / "config.json")
    fsdp = math.gcd(max(config.mesh.fsdp, 0), jax.device_count())  # -1: all devices
    mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": fsdp}))
    parallel.check_batch_sizes({"data.eval_batch_size": config.data.eval_batch_size}, mesh)
    task = tasks.build(config)
    split = data.open_split(config.data, config.data.eval_split)  # one batch read, for shapes
    checkpointer = Checkpointer(workdir / "checkpoints")  # reads only: the run may be saving
    try:
        parts = run_parts(task, config, mesh, example_batch(split, config, mesh))
        state, _ = initial_state(parts, checkpointer, step=step, require=True)
    finally:
        checkpointer.close()
    return config, task, mesh, state
