"""Draw a trained 2-d VAE's latent map, manifold grid and a spherical interpolation as PNGs.

    TFDS_DATA_DIR=../shared/data/tensorflow_datasets \
        python docs/make_vae_figures.py runs/mnist_vae_2d docs/figures

Made the PNGs in docs/figures from `gen-jax train experiments/mnist_vae_2d.py` (RESULTS.md).
"""

import sys

from gen_jax import data, images, latent, train


def main(workdir: str, out: str) -> None:
    config, task, _, state = train.load_state(workdir)
    test = data.load_split(config.data, "test")
    mean, _ = latent.encode(task, state.params, data.scale_to_unit(test)["image"])
    points, _ = latent.project_2d(mean)
    figure = latent.scatter_figure(
        points, test["label"], "2-d VAE: posterior means of the test set"
    )
    figure.savefig(f"{out}/vae_2d_latent_map.png", dpi=80)
    images.save_png(
        images.grid(latent.manifold_grid(task, state.params)), f"{out}/vae_2d_manifold.png"
    )
    path = latent.interpolate(mean[0], mean[1], 10, spherical=True)
    images.save_png(
        images.grid(latent.decode(task, state.params, path)[None]), f"{out}/vae_2d_slerp.png"
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
