"""Draw a trained 2-d VAE's latent map, manifold grid and a spherical interpolation as PNGs.

    TFDS_DATA_DIR=../shared/data/tensorflow_datasets \
        python docs/make_vae_figures.py runs/mnist_vae_2d docs/figures

Made the PNGs in docs/figures from `gen-jax train experiments/mnist_vae_2d.py` (RESULTS.md).
"""

import sys

from gen_jax import images, latent, load_run


def main(workdir: str, out: str) -> None:
    run = load_run(workdir)
    test = run.images("test")
    mean, _ = run.encode(test["image"])
    points, _ = latent.project_2d(mean)
    figure = latent.scatter_figure(
        points, test["label"], "2-d VAE: posterior means of the test set"
    )
    figure.savefig(f"{out}/vae_2d_latent_map.png", dpi=80)
    images.save_png(images.grid(latent.manifold_grid(run.decode)), f"{out}/vae_2d_manifold.png")
    path = latent.interpolate(mean[0], mean[1], 10, spherical=True)
    images.save_png(images.grid(run.decode(path)[None]), f"{out}/vae_2d_slerp.png")


if __name__ == "__main__":
    main(*sys.argv[1:3])
