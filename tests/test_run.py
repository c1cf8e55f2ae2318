"""`gen_jax.load_run`: a trained run's functions for notebooks, and `gen-jax sample`."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import gen_jax
from gen_jax import cli, data
from gen_jax.errors import GenJaxError
from gen_jax.images import grid
from gen_jax.metric_writer import read_metrics


@pytest.fixture(scope="module")
def runs(tiny_run):
    """family -> the session's tiny mocked run of it (cgan: a class-conditional GAN; diffusion:
    class-conditional, guided, sampled by DDPM)."""
    conditional = tiny_run("gan", **{"model.num_classes": 10})
    made = {name: tiny_run(name) for name in ("classifier", "vae", "gan", "diffusion")}
    return made | {"cgan": conditional}


def test_a_vae_run_encodes_decodes_and_samples_images_in_the_unit_range(runs, mock_mnist):
    run = gen_jax.load_run(runs["vae"])
    assert run.step == 10 and run.kind == "vae"
    test = run.images("test")
    mean, logvar = run.encode(test["image"][:7])
    assert mean.shape == logvar.shape == (7, run.latent_dim)
    decoded = run.decode(mean)
    assert decoded.shape == (7, 28, 28, 1) and decoded.min() >= 0 and decoded.max() <= 1
    np.testing.assert_array_equal(run.sample(5, seed=3), run.decode(run.prior(5, seed=3)))
    assert not np.array_equal(run.sample(5, seed=3), run.sample(5, seed=4))
    trained = run.state  # the compiled functions take the state, not a copy made at first use
    run.state = run.state.replace(params=jax.tree.map(jnp.zeros_like, trained.params))
    assert not np.array_equal(run.decode(mean), decoded)


def test_batched_functions_do_not_depend_on_the_batch_size(runs, mock_mnist):
    run = gen_jax.load_run(runs["vae"])
    images = run.images("test")["image"][:20]
    in_one = data.map_batches(lambda x: x * 2, images, batch_size=20)
    in_three = data.map_batches(lambda x: x * 2, images, batch_size=7)
    np.testing.assert_array_equal(in_one, in_three)
    # Posterior means, |mean| <= ~0.6, each a 784-term dot product (sum |x w| up to ~13) and then
    # a 32-term one, compiled for 20 rows or for 10 (XLA may pick other kernels, AVX2 or
    # AVX-512, which sum in another order): float32 keeps each within ~1e-6 of the exact value
    # (measured against float64), so two orders differ by ~2e-6 at most, whatever the size of
    # the mean itself (on AVX2 one of -0.013 differed by 6e-8): atol 5e-6. Rows that depended on
    # the other rows of a batch (e.g. images normalised by the batch's mean intensity) moved by
    # 2e-3.
    np.testing.assert_allclose(
        run.encode(images)[0][:10], run.encode(images[:10])[0], rtol=0, atol=5e-6
    )
    with pytest.raises(GenJaxError, match="one or more examples"):
        run.encode(images[:0])


def test_a_gan_run_maps_noise_to_images_and_a_conditional_one_needs_labels(runs, mock_mnist):
    run = gen_jax.load_run(runs["gan"])
    images = run.decode(run.prior(6))
    assert images.shape == (6, 28, 28, 1) and images.min() >= 0 and images.max() <= 1
    conditional = gen_jax.load_run(runs["cgan"])
    with pytest.raises(GenJaxError, match="pass labels="):
        conditional.decode(conditional.prior(3))
    by_class = conditional.decode(np.repeat(conditional.prior(1), 10, axis=0), np.arange(10))
    assert len({image.tobytes() for image in by_class}) == 10  # the label changes the image
    cycled = conditional.decode(conditional.prior(12), np.arange(12) % 10)
    np.testing.assert_array_equal(conditional.sample(12), cycled)  # sample cycles the classes


def test_a_diffusion_run_samples_decodes_noise_and_inverts_images(runs, mock_mnist):
    run = gen_jax.load_run(runs["diffusion"])
    noise = run.prior(5, seed=1)
    assert noise.shape == (5, 28, 28, 1)
    with pytest.raises(GenJaxError, match="pass labels="):
        run.decode(noise)
    labels = np.arange(5)
    images = run.decode(noise, labels)  # the task's sampler: DDPM, its fresh noise fixed
    assert images.shape == (5, 28, 28, 1) and images.min() >= 0 and images.max() <= 1
    np.testing.assert_array_equal(run.sample(5, seed=1), images)  # classes cycled from 0
    np.testing.assert_array_equal(run.decode(noise, labels), images)  # the same each time
    for other in ({"steps": 2}, {"sampler": "heun"}, {"sampler": "ddim"}):
        assert not np.allclose(run.decode(noise, labels, **other), images, atol=1e-3), other
    with pytest.raises(GenJaxError, match=r"steps=: a 'gan' run takes no such sampling setting"):
        gen_jax.load_run(runs["gan"]).decode(np.zeros((1, 8)), steps=5)


def test_a_diffusion_run_gives_its_trajectories_guidance_scales_and_evaluation_settings(
    runs, mock_mnist
):
    run = gen_jax.load_run(runs["diffusion"])  # trained at guidance scale 2, sampled in 3 steps
    noise, labels = run.prior(4, seed=2), np.arange(4)
    path = run.trajectory(noise, labels)
    assert path.shape == (4, 4, 28, 28, 1)  # noise, two steps between, the images
    np.testing.assert_allclose(path[0], np.clip(run.to_unit(noise), 0, 1), atol=1e-6)
    images = run.decode(noise, labels)
    np.testing.assert_allclose(path[-1], images, atol=1e-5)
    np.testing.assert_array_equal(run.decode(noise, labels, guidance_scale=2.0), images)
    assert not np.allclose(run.decode(noise, labels, guidance_scale=1.0), images, atol=1e-3)
    with pytest.raises(GenJaxError, match="guidance_scale=: a 'gan' run takes no such"):
        gen_jax.load_run(runs["gan"]).decode(np.zeros((1, 8)), guidance_scale=2.0)
    with pytest.raises(GenJaxError, match=r"\['sample_step'\], which are not task settings"):
        run.evaluate(sample_step=1)


def test_a_diffusion_runs_evaluations_draw_samples_and_a_trajectory(runs):
    pictures = sorted(p.name for p in (runs["diffusion"] / "samples").glob("*.png"))
    assert {name.rsplit("_", 1)[0] for name in pictures} == {"samples", "trajectory"}
    trajectory = np.asarray(Image.open(max((runs["diffusion"] / "samples").glob("trajectory_*"))))
    samples = np.asarray(Image.open(max((runs["diffusion"] / "samples").glob("samples_*"))))
    assert trajectory.std() > 0 and samples.std() > 0  # drawn, not blank


@pytest.mark.slow
def test_a_scored_diffusion_runs_test_loss_does_not_depend_on_how_it_samples(tiny_run, mock_mnist):
    classifier = tiny_run("classifier")
    run = gen_jax.load_run(tiny_run("diffusion", **{"task.classifier_workdir": str(classifier)}))
    default, other = run.evaluate(), run.evaluate(sample_steps=1, sampler="euler")
    assert default["fid"] != other["fid"]  # it sampled, and otherwise
    assert other["loss"] == default["loss"]


@pytest.mark.slow
def test_ddim_inversion_encodes_images_that_decode_back_close_to_them(tiny_run, mock_mnist):
    run = gen_jax.load_run(tiny_run("diffusion", **{"task.guidance_scale": 1.0}))  # unguided
    images, labels = run.images("test")["image"][:4], np.arange(4)
    deterministic = {"steps": 50, "sampler": "ddim"}  # eta 0
    noise = run.encode(images, labels, steps=50)
    assert noise.shape == (4, 28, 28, 1) and np.isfinite(noise).all()
    back = run.decode(noise, labels, **deterministic)
    fresh = run.decode(run.prior(4, seed=5), labels, **deterministic)
    unit = run.to_unit(images)
    error = lambda decoded: float(np.abs(decoded - unit).mean())
    # measured 0.093 against 0.505 (a tiny U-Net of 10 steps); noise unrelated to the images
    # (a broken inversion) decodes as far from them as fresh noise does, a ratio near 1
    assert error(back) < 0.5 * error(fresh), (error(back), error(fresh))


def test_a_classifier_run_gives_probabilities_and_features(runs, mock_mnist):
    run = gen_jax.load_run(runs["classifier"])
    images = run.images("test")["image"][:9]
    probs = run.classify(images)
    assert probs.shape == (9, 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)  # a float32 sum of 10: ~1e-7
    assert run.features(images).shape[0] == 9
    logged = [r for r in read_metrics(runs["classifier"]) if r["split"] == "test"]
    assert run.evaluate()["accuracy"] == next(r["value"] for r in logged if r["name"] == "accuracy")


def test_asking_a_run_for_what_its_family_lacks_is_a_clear_error(runs, mock_mnist):
    with pytest.raises(GenJaxError, match="'classifier' run: encode needs a 'diffusion' or 'vae'"):
        gen_jax.load_run(runs["classifier"]).encode(np.zeros((1, 28, 28, 1)))
    with pytest.raises(GenJaxError, match="'gan' run: classify needs a 'classifier' run"):
        gen_jax.load_run(runs["gan"]).classify(np.zeros((1, 28, 28, 1)))


def test_gen_jax_sample_writes_a_grid_and_refuses_a_classifier(runs, tmp_path, mock_mnist, capsys):
    out = tmp_path / "grid.png"
    assert cli.main(["sample", str(runs["vae"]), "--num", "16", "--out", str(out)]) == 0
    assert Image.open(out).size == (2 + 4 * 30, 2 + 4 * 30)  # 4 x 4 tiles of 28 + 2 padding
    assert json.loads(capsys.readouterr().out)["num"] == 16
    assert cli.main(["sample", str(runs["classifier"]), "--out", str(out)]) == 2
    assert "needs a 'diffusion' or 'gan' or 'vae' run" in capsys.readouterr().err


def test_gen_jax_sample_writes_each_sample_to_a_folder(runs, tmp_path, mock_mnist, capsys):
    """As FID tools read samples: one PNG each, the grid's tiles, in order."""
    folder = tmp_path / "samples"
    assert cli.main(["sample", str(runs["gan"]), "--num", "5", "--folder", str(folder)]) == 0
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(5)]
    expected = grid(gen_jax.load_run(runs["gan"]).sample(5)[:1])[2:-2, 2:-2, 0]
    np.testing.assert_array_equal(np.asarray(Image.open(files[0])), expected)
    assert json.loads(capsys.readouterr().out)["out"] == str(folder)


def test_gen_jax_sample_takes_a_diffusion_runs_sampler_and_steps(
    runs, tmp_path, mock_mnist, capsys
):
    out, diffusion = tmp_path / "grid.png", str(runs["diffusion"])
    flags = ["--num", "4", "--steps", "3", "--sampler", "heun", "--out", str(out)]
    assert cli.main(["sample", diffusion, *flags]) == 0
    written = json.loads(capsys.readouterr().out)
    assert (written["steps"], written["sampler"]) == (3, "heun")
    expected = gen_jax.load_run(diffusion).sample(4, steps=3, sampler="heun")
    np.testing.assert_array_equal(np.asarray(Image.open(out)), grid(expected)[..., 0])
    assert cli.main(["sample", diffusion, "--sampler", "rk4", "--out", str(out)]) == 2
    assert "unknown sampler 'rk4'" in capsys.readouterr().err


def test_loading_a_folder_that_holds_no_run_is_a_clear_error(tmp_path):
    with pytest.raises(GenJaxError, match=r"config.json not found: is .* a gen-jax workdir\?"):
        gen_jax.load_run(tmp_path)
