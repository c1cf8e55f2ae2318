"""Paper-scale recipes and memory controls: parameter counts from `jax.eval_shape` (no compile),
one step of each architecture at a reduced width, rematerialisation, gradient accumulation and
mixed precision."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gen_jax import config as config_lib
from gen_jax import data, models, tasks
from gen_jax.errors import GenJaxError
from tests.helpers.runs import REPO

CIFAR10 = data.DataSpec((32, 32, 3), tuple("0123456789"), True)


def recipe(name: str, *overrides: str) -> ml_collections.ConfigDict:
    config = config_lib.load_experiment(REPO / "experiments" / f"{name}.py")
    config_lib.apply_overrides(config, list(overrides))
    tasks.fit_to_data(config, CIFAR10)
    return config


def parameter_count(model_config: ml_collections.ConfigDict, labels: bool = False) -> int:
    """The parameters of the model, counted from abstract shapes (nothing is computed)."""
    model = models.build(model_config)
    images = jnp.zeros((2, *model.image_shape))
    label = jnp.zeros((2,), jnp.int32) if labels else None
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, jnp.zeros(2), label))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))


@pytest.mark.parametrize("name", ["cifar10_ddpm_ho2020", "cifar10_cfm_tong2023"])
def test_the_ddpm_cifar10_unet_has_the_papers_35_7_million_parameters(name):
    # DDPM's released network (diffusion_tf) has 35,746,307; torchcfm's UNetModelWrapper with
    # the settings of its CIFAR-10 example has the same layers (its code, read: the residual
    # blocks, attention at 16 pixels and in the middle, conv resampling)
    count = parameter_count(recipe(name).model)
    assert count == 35_746_307
    assert 35.65e6 <= count < 35.75e6  # the paper's "35.7M", to its rounding


def test_dit_s2_has_the_papers_33_million_parameters_in_the_papers_setting():
    config = recipe("cifar10_dit_s2").model
    assert parameter_count(config, labels=True) == 32_475_660  # CIFAR-10: 3 channels, 11 rows
    config.update({"image_shape": (32, 32, 4), "num_classes": 1000})  # ImageNet 256's latents
    learned_variance = 384 * 2 * 2 * 4 + 2 * 2 * 4  # the paper's final layer outputs 8 channels
    count = parameter_count(config, labels=True) + learned_variance
    assert count == 32_865_056
    assert 32.5e6 <= count < 33.5e6  # the paper's "33M" for DiT-S/2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10_ddpm_ho2020", "cifar10_dit_s2"])  # cfm: ddpm's U-Net
def test_each_paper_architecture_trains_a_step_at_a_reduced_width(name):
    """The recipe's own objective and model, at 1/8 of the width, for a batch of 2."""
    narrow = {  # the features of one step that compiles in seconds on a CPU
        "cifar10_dit_s2": ["--config.model.features=48", "--config.model.depth=2"],
    }.get(name, ["--config.model.features=16", "--config.model.groups=8"])
    config = recipe(name, *narrow, "--config.data.batch_size=2")
    task = tasks.build(config)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32),
        "label": np.array([3, 7], np.int32),
    }
    # A state from the init's shapes (compiling the init would cost ~10 s more): Adam's moments,
    # the step and the key at zero, as `task.init` makes them; weights drawn small
    shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0), batch)
    state = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes)
    weights = jax.tree.map(
        lambda w: jnp.asarray(0.05 * rng.normal(size=w.shape), w.dtype), shapes.params
    )
    state = state.replace(params=weights, ema=weights)
    state, metrics = jax.jit(task.train_step)(state, batch)
    assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))
    assert float(metrics["grad_norm"]) > 0


TINY_UNET = {  # each option of the paper's network, at 8x8 pixels (compiles in seconds)
    "name": "unet",
    "image_shape": (8, 8, 3),
    "features": 8,
    "channel_multipliers": (1, 2),
    "blocks_per_level": 1,
    "attention": True,
    "attention_resolutions": (4,),
    "groups": 4,
    "resample": "conv",
}
# without attention and strided convolutions, whose gradients XLA:CPU compiles slowly
PLAIN_UNET = {
    **TINY_UNET,
    "attention": False,
    "attention_resolutions": (),
    "resample": "space_to_depth",
}
TINY_DIT = {
    "name": "dit",
    "image_shape": (8, 8, 3),
    "features": 32,
    "depth": 2,
    "heads": 2,
    "num_classes": 10,
}


def regression(model_settings: dict, batch: int = 8) -> tuple[Callable, dict]:
    """A regression loss of the model's parameters, and parameters drawn for it (from their
    shapes: jitting the model's init costs more than the test)."""
    model = models.build(ml_collections.ConfigDict(model_settings))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(batch, *model.image_shape)), jnp.float32)
    times = jnp.linspace(0.1, 0.9, batch)
    labels = jnp.arange(batch) % 10 if model_settings.get("num_classes") else None
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), images, times, labels)["params"]
    params = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.normal(size=s.shape), s.dtype), shapes)

    def loss(params):
        return jnp.mean((model.apply({"params": params}, images, times, labels) - images) ** 2)

    return loss, params


def residual_bytes(loss: Callable, params: dict) -> int:
    """The bytes the forward pass keeps for the backward pass (the residuals its pullback
    holds, from shapes alone): what remat trades for recomputation. XLA:CPU's `memory_analysis`
    does not show that trade: its scheduler is not memory-aware (it measures even a remat chain
    of dense layers larger); a GPU's or TPU's is."""
    pullback = jax.eval_shape(lambda params: jax.vjp(loss, params)[1], params)
    return sum(int(np.prod(leaf.shape)) * leaf.dtype.itemsize for leaf in jax.tree.leaves(pullback))


@pytest.mark.parametrize("settings", [TINY_UNET, TINY_DIT], ids=["unet", "dit"])
def test_remat_keeps_only_the_blocks_inputs_for_the_backward_pass(settings):
    loss, params = regression(settings)
    remat_loss, _ = regression({**settings, "remat": True})
    kept, remat_kept = residual_bytes(loss, params), residual_bytes(remat_loss, params)
    assert remat_kept < 0.5 * kept  # measured: unet 0.21, dit 0.18 of the bytes kept without


@pytest.mark.slow  # compiles two gradients (~5 s on a 2-core CPU)
def test_remat_recomputes_the_same_gradient():
    """The DiT: attention and dense blocks (a U-Net's gradient takes ~8 s to compile)."""
    loss, params = regression(TINY_DIT)
    remat_loss, _ = regression({**TINY_DIT, "remat": True})
    (value, grads), (remat_value, remat_grads) = (
        jax.jit(jax.value_and_grad(f))(params) for f in (loss, remat_loss)
    )
    # The same operations, recomputed: the same numbers up to the order XLA fuses them in, on
    # the scale of the largest gradient (a leaf whose gradient cancels to rounding noise, ~1e-12,
    # is rounded differently by two fusions)
    assert float(remat_value) == pytest.approx(float(value), rel=1e-6)
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(remat_grads), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * scale)


def test_remat_keeps_the_parameter_names_so_a_checkpoint_restores_either_way():
    shapes = {}
    for remat in (False, True):
        model = models.build(ml_collections.ConfigDict({**TINY_UNET, "remat": remat}))
        images = jnp.zeros((1, 8, 8, 3))
        init = lambda: model.init(jax.random.PRNGKey(0), images, jnp.zeros(1))  # noqa: B023
        shapes[remat] = jax.tree.map(lambda leaf: leaf.shape, jax.eval_shape(init))
    assert shapes[True] == shapes[False]


def test_remat_on_a_model_without_blocks_is_refused_naming_the_key():
    with pytest.raises(GenJaxError, match=r"model 'cnn' takes no option\(s\) \['remat'\]"):
        models.build(ml_collections.ConfigDict({"name": "cnn", "remat": True}))


@pytest.mark.slow  # compiles a step (3-8 s on a 2-core CPU)
def test_accumulated_micro_batches_need_less_memory_than_concurrent_slices():
    """The slices of `train.batch_splits` as a lax.scan (`accumulate_gradients`) keep one
    slice's activations at a time; run concurrently, all of them."""
    from tests.helpers.experiments import tiny_config

    memory = {}
    for accumulate in (False, True):
        config = tiny_config("classifier")
        config.model = ml_collections.ConfigDict({"name": "cnn"})  # no batch norm: it splits
        config.train.update({"batch_splits": 4, "accumulate_gradients": accumulate})
        task = tasks.build(config)
        batch = {"image": jnp.zeros((64, 28, 28, 1)), "label": jnp.zeros((64,), jnp.int32)}
        state = jax.eval_shape(task.init, jax.random.PRNGKey(0), batch)
        compiled = jax.jit(task.train_step).lower(state, batch).compile()
        memory[accumulate] = compiled.memory_analysis().temp_size_in_bytes
    # one slice of four live at a time: ~1/4 of the concurrent slices' temporaries plus the
    # gradient sums (measured 0.15, AMD EPYC Zen 4); 0.6 leaves room for another CPU's fusions,
    # while slices run concurrently (the bug this guards against) measure 1
    assert memory[True] < 0.6 * memory[False]


def test_unet_and_dit_compute_in_bfloat16_with_float32_parameters():
    """`model.dtype=bfloat16` is mixed precision: convolutions, dense layers and attention in
    bfloat16; parameters, normalisation statistics, the output and so the loss and the optimizer
    state in float32."""
    for settings in (TINY_UNET, TINY_DIT):  # traced only: shapes and types, nothing computed
        model = models.build(ml_collections.ConfigDict({**settings, "dtype": "bfloat16"}))
        images, times = jnp.zeros((2, 8, 8, 3)), jnp.zeros(2)
        labels = jnp.zeros(2, jnp.int32) if settings.get("num_classes") else None
        params = jax.eval_shape(model.init, jax.random.PRNGKey(0), images, times, labels)
        assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype("float32")}
        jaxpr = jax.make_jaxpr(model.apply)(params, images, times, labels)
        assert "bf16" in str(jaxpr)
        assert jaxpr.out_avals[0].dtype == jnp.float32


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"attention_resolutions": (5,)}, r"feature maps are \[8, 4\] pixels high"),
        ({"resample": "bilinear"}, "model.resample 'bilinear' is not one of"),
        ({"dropout": 1.0}, r"model.dropout 1.0 must be in \[0, 1\)"),
    ],
)
def test_unet_options_it_cannot_build_are_refused_naming_the_key(settings, message):
    with pytest.raises(GenJaxError, match=message):
        models.build(ml_collections.ConfigDict({**TINY_UNET, **settings}))


def test_dit_sizes_it_cannot_tile_are_refused():
    with pytest.raises(GenJaxError, match=r"model\.patch_size 3 must divide"):
        models.build(ml_collections.ConfigDict({**TINY_DIT, "patch_size": 3}))
    with pytest.raises(GenJaxError, match=r"multiple of model\.heads"):
        models.build(ml_collections.ConfigDict({**TINY_DIT, "heads": 3}))


@pytest.mark.slow  # compiles a step (3-8 s on a 2-core CPU)
def test_dit_starts_as_the_zero_function_and_keeps_the_image_shape():
    """adaLN-Zero: every block's gates and the final layer start at zero (Peebles & Xie)."""
    model = models.build(ml_collections.ConfigDict(TINY_DIT))
    images = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
    times, labels = jnp.array([0.2, 0.7]), jnp.array([1, 10])  # 10: "no label"
    params = jax.jit(model.init)(jax.random.PRNGKey(0), images, times, labels)
    out = jax.jit(model.apply)(params, images, times, labels)
    assert out.shape == images.shape and not np.any(np.asarray(out))
    blocks = [v for k, v in params["params"].items() if k.startswith("DiTBlock_")]
    assert len(blocks) == TINY_DIT["depth"]
    for block in blocks:  # each block's modulation (shift, scale, gate) regressed as zero
        assert not np.any(np.asarray(block["Dense_0"]["kernel"]))
        assert np.any(np.asarray(block["Dense_1"]["kernel"]))  # the MLP itself is not


@pytest.mark.slow  # compiles a step (3-8 s on a 2-core CPU)
def test_dropout_is_on_in_training_and_off_in_evaluation():
    settings = {**PLAIN_UNET, "dropout": 0.5}
    model = models.build(ml_collections.ConfigDict(settings))
    _, params = regression(settings, batch=2)
    images, times = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3)), jnp.ones(2) / 2
    apply = jax.jit(
        lambda key, train: model.apply(
            {"params": params}, images, times, train=train, rngs={"dropout": key}
        ),
        static_argnums=1,
    )
    evaluated = [apply(jax.random.PRNGKey(k), False) for k in range(2)]
    np.testing.assert_array_equal(*evaluated)
    trained = [apply(jax.random.PRNGKey(k), True) for k in range(2)]
    assert not np.allclose(trained[0], trained[1]) and not np.allclose(trained[0], evaluated[0])


def test_memory_and_layout_settings_may_change_on_resume_and_are_recorded():
    from gen_jax import resume_policy

    old = config_lib.load_experiment(REPO / "experiments" / "cifar10_ddpm_ho2020.py")
    new = old.copy_and_resolve_references()
    new.model.remat, new.mesh.fsdp = True, 8
    new.train.update({"batch_splits": 4, "accumulate_gradients": True})
    refused, recorded = resume_policy.sorted_changes(old, new, same_data=True)
    assert refused == {}
    assert set(recorded) == {
        "model.remat",
        "mesh.fsdp",
        "train.batch_splits",
        "train.accumulate_gradients",
    }
