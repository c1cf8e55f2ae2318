"""CIFAR-10 (JPEG copy) at airbench's speed (Keller Jordan's airbench94, 94.01% on canonical
CIFAR-10 in 0.36 PFLOP): its network (`gen_jax/models/airbench.py`: whitening layer from the data,
three conv groups, 1.97M parameters), batch 1024, Nesterov SGD with its decoupled hyperparameters
(batch norm biases at 64x the rate), label smoothing 0.2, 2-pixel random crops, flips alternating
by epoch, a warm-up from 0.2x over 23% of the run then a linear decay to 0.07x, lookahead every
5 steps, test-time flips and 1-pixel translations; 18 epochs, where airbench94 trains 9.9.

    gen-jax train experiments/cifar10_airbench.py --workdir runs/cifar10_airbench [--stop_at STEP]

Goal (issue 22): >= 93.5% within 0.6 PFLOP, out of reach on this JPEG copy, on which
airbench94's own procedure (benchmarks/airbench_reference.py, PyTorch) trains as this recipe does.
Measured: RESULTS.md, section 'CIFAR-10 (JPEG copy) classifier baseline'.
"""

from gen_jax.recipes import base_config

BATCH = 1024
EPOCH = 50_000 // BATCH  # 48 full batches
# airbench94's 9.9 epochs reached 90.34% on the JPEG copy; the goal's 0.6 PFLOP allows ~19 epochs
# of this network, and airbench's schedules are fractions of the run, so they stretch with it
EPOCHS = 18
MOMENTUM = 0.85
# airbench's rates are per 1024 examples of a summed loss, its momentum's gain 1 / (1 - momentum)
# divided out; for a mean loss at batch 1024: lr 11.5 / (1 + 1 / (1 - m)) = 1.5, and the weight
# decay 0.0153 per step of that rate
LEARNING_RATE = 11.5 / (1 + 1 / (1 - MOMENTUM))
DECAY_PER_STEP = 0.0153 * BATCH / (BATCH * (1 + 1 / (1 - MOMENTUM)))


def get_config():
    config = base_config()
    config.data.folder = "../shared/data/cifar10_jpeg"  # relative to where you run gen-jax
    config.data.batch_size = BATCH
    config.data.eval_batch_size = 1000
    config.data.preprocess = ("random_crop", "alternating_flip", "normalize")
    config.data.crop_padding = 2
    config.data.crop_mode = "reflect"
    config.data.mean = (0.4913, 0.4821, 0.4465)  # the training split's (experiments/cifar10_cnn.py)
    config.data.std = (0.2452, 0.2428, 0.2606)
    config.model.name = "airbench"
    config.task.label_smoothing = 0.2
    config.task.test_flips = True
    config.task.test_shift = 1
    config.optimizer.update(
        {
            "name": "sgd",
            "learning_rate": LEARNING_RATE,
            "momentum": MOMENTUM,
            "nesterov": True,
            "weight_decay": DECAY_PER_STEP / LEARNING_RATE,  # L2 on the gradient: this per step
            "bias_lr_scale": 64.0,
            "schedule": "linear",
            "warmup_from": 0.2,
            "end_fraction": 0.07,
            "lookahead_every": 5,
            "freeze": "whitening_bias",
            "freeze_at": 3 * EPOCH,
        }
    )
    config.train.num_steps = EPOCHS * EPOCH
    config.optimizer.warmup_steps = int(0.23 * config.train.num_steps)
    config.train.eval_every = 0  # the final evaluation only
    config.train.checkpoint_every = EPOCH
    return config


# `gen-jax reproduce` checks: metric -> (value, tolerance) or a goal ('<=' | '>=', bound).
# one run (18 epochs); the tolerance is for seed-to-seed spread, as which another CPU's rounding
# acts: airbench94's procedure, twice at 9.9 epochs on this data with other seeds (RESULTS.md),
# landed 0.13 points apart; 0.5 points is ~4x that
EXPECTED = {"accuracy": (0.9124, 0.005)}
# QUICK: measured once (Intel Xeon VM, family 6 model 207): 20 steps (0.4 epochs), test-time
# flips only; lookahead makes its weights mostly step 15's. A young network, which another CPU's
# rounding moves by points
QUICK = {
    "overrides": [
        "--config.train.num_steps=20",
        "--config.optimizer.warmup_steps=5",
        "--config.task.test_shift=0",
    ],
    "expected": {"accuracy": (0.512, 0.04)},
}
