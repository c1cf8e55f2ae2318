"""A small untrained VAE task, for tests of the objective and of the latent-space tools."""

from gen_jax import config as config_lib
from gen_jax import tasks


def tiny_task(image_shape=(28, 28, 1), preprocess=("scale_to_unit",), **task_options):
    config = config_lib.vae_config()
    config.model = config_lib.ml_collections.ConfigDict(
        {"name": "mlp_vae", "latent_dim": 2, "hidden": 3, "image_shape": image_shape}
    )
    config.data.preprocess = preprocess
    config.task.update(task_options)
    return tasks.build(config)
