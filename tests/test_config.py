"""Experiment configs and their command-line overrides."""

import json

import pytest

from gen_jax import config as config_lib
from gen_jax import models
from gen_jax.errors import GenJaxError
from tests.helpers.runs import REPO


@pytest.fixture
def config():
    return config_lib.load_experiment(REPO / "experiments/mnist_cnn.py")


def test_every_experiment_file_loads_and_builds_its_task():
    from gen_jax import tasks

    for path in sorted((REPO / "experiments").glob("*.py")):
        config = config_lib.load_experiment(path)
        if config.task.get("classifier_workdir"):  # a trained run this test does not have
            config.task.classifier_workdir = ""
        tasks.build(config)


def test_overrides_set_values_of_the_existing_type(config):
    config_lib.apply_overrides(
        config,
        [
            "--config.train.num_steps=7",
            "--config.optimizer.learning_rate=1",
            "--config.model.name=bn_cnn",
        ],
    )
    assert config.train.num_steps == 7
    assert config.optimizer.learning_rate == 1.0 and isinstance(
        config.optimizer.learning_rate, float
    )
    assert config.model.name == "bn_cnn"


def test_any_option_of_the_model_can_be_overridden(config):
    config_lib.apply_overrides(
        config, ["--config.model.features=(8, 16, 16)", "--config.model.name=bn_cnn"]
    )  # the model's name applies first: its options are those allowed
    assert config.model.features == (8, 16, 16)
    assert models.build(config.model).features == (8, 16, 16)
    with pytest.raises(GenJaxError, match=r"model 'bn_cnn' has no option 'feature'.*features"):
        config_lib.apply_overrides(config, ["--config.model.feature=(8,)"])
    with pytest.raises(GenJaxError, match=r"'model.hidden' expects an integer"):
        config_lib.apply_overrides(config, ["--config.model.hidden=wide"])


def test_tuple_and_bool_overrides_parse(config):
    config.flag = False
    config_lib.apply_overrides(
        config, ["--config.data.preprocess=('scale_to_symmetric',)", "--config.flag=true"]
    )
    assert config.data.preprocess == ("scale_to_symmetric",)
    assert config.flag is True


def test_unknown_key_names_the_key_and_what_is_allowed(config):
    with pytest.raises(
        GenJaxError, match=r"unknown config key 'train.num_step'.*allowed: .*num_steps"
    ):
        config_lib.apply_overrides(config, ["--config.train.num_step=5"])


def test_unknown_section_is_rejected(config):
    with pytest.raises(GenJaxError, match=r"the config has no 'trian'"):
        config_lib.apply_overrides(config, ["--config.trian.num_steps=5"])


@pytest.mark.parametrize(
    "override, expected",
    [
        ("--config.train.num_steps=1.5", "expects an integer"),
        ("--config.train.num_steps=many", "expects an integer"),
        ("--config.optimizer.learning_rate=fast", "expects a number"),
        ("--config.data.preprocess=scale", "expects a tuple"),
    ],
)
def test_wrongly_typed_value_is_rejected_with_the_expected_type(config, override, expected):
    with pytest.raises(GenJaxError, match=expected):
        config_lib.apply_overrides(config, [override])


def test_a_section_cannot_be_replaced_by_a_value(config):
    with pytest.raises(GenJaxError, match="is a section"):
        config_lib.apply_overrides(config, ["--config.train=3"])


def test_saved_config_round_trips(config, tmp_path):
    config_lib.save(config, tmp_path / "config.json")
    assert (
        json.loads((tmp_path / "config.json").read_text())["train"]["num_steps"]
        == config.train.num_steps
    )
    assert config_lib.load(tmp_path / "config.json") == config


def test_a_saved_config_older_than_a_key_gets_its_family_default(tmp_path):
    config = config_lib.gan_config()
    config_lib.save(config, tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["task"]["r1_penalty"], saved["train"]["num_steps"]  # written before they existed
    del saved["optimizer"]["generator"]["decay_fraction"]  # ... also inside a nested section
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert config_lib.load(tmp_path / "config.json") == config


def test_a_run_saved_before_the_mesh_section_takes_the_default_mesh(tmp_path):
    config = config_lib.diffusion_config()
    config_lib.save(config, tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["mesh"]  # config.json of a run trained before FSDP
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = config_lib.load(tmp_path / "config.json")
    assert loaded.mesh == config_lib.base_config().mesh and loaded == config


def test_cli_rejects_bad_override_before_running(tmp_path, capsys):
    from gen_jax import cli

    code = cli.main(
        [
            "train",
            str(REPO / "experiments/mnist_cnn.py"),
            "--workdir",
            str(tmp_path / "w"),
            "--config.train.steps=3",
        ]
    )
    assert code == 2
    assert "unknown config key 'train.steps'" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_num_epochs_counts_the_steps_in_whole_batches_of_the_split_and_says_so(
    experiment, mock_mnist, capsys
):
    from gen_jax import train

    path = experiment(**{"train.num_epochs": 2.5, "data.batch_size": 48})
    config = config_lib.load_experiment(path)  # mocked MNIST: MOCK_EXAMPLES training images
    recorded, source, said = train.as_recorded(config)
    per_epoch = len(source) // 48
    assert recorded.train.num_steps == -(-5 * per_epoch // 2)  # 2.5 epochs, rounded up
    assert said == (
        f"train.num_epochs=2.5: {recorded.train.num_steps} steps ({per_epoch} an epoch: "
        f"{len(source)} training examples // batch 48)"
    )
    assert config.train.num_steps == 10  # the experiment's own config is left as it was
    config_lib.apply_overrides(config, ["--config.train.num_steps=7"])  # counting in steps
    assert config.train.num_epochs == 0 and train.as_recorded(config)[0].train.num_steps == 7
    config_lib.apply_overrides(config, ["--config.train.num_epochs=1"])
    assert train.as_recorded(config)[0].train.num_steps == per_epoch
