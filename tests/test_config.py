"""Every config composes and validates; bad configs fail with the key named."""

from pathlib import Path
from unittest import mock

import pytest
from omegaconf import OmegaConf

from rtkrun import config
from rtkrun.config import to_dict
from rtkrun.errors import ConfigError
from rtkrun.paths import CONF_DIR
from tests.conftest import compose_cfg

GROUP_OPTIONS = {
    group: sorted(
        p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml") if not p.stem.startswith(("default_", "debug_"))
    )
    for group in ("model", "schedule", "sampler", "logger", "experiment", "sweep", "trainer", "evaluation")
}


def validate(cfg):
    """``config.validate``, held to OmegaConf's merge: values that already have their field's
    type are built directly, and must give what OmegaConf's merge and ``to_object`` give (the
    path every other value takes), field for field and type for type (``repr``: 1 is not 1.0)."""
    run = config.validate(cfg)
    with mock.patch.object(config, "_exactly_typed", lambda schema, node: None):
        merged = config.validate(cfg)
    assert repr(run) == repr(merged)
    # and to_dict gives what OmegaConf's structured → container gave (the recorded configs)
    assert repr(to_dict(run)) == repr(OmegaConf.to_container(OmegaConf.structured(merged)))
    return run


@pytest.mark.parametrize("command", ["train", "sample", "evaluate", "diagnose", "bench"])
def test_primary_configs_validate(command):
    overrides = ["samples=x.npz"] if command == "evaluate" else []
    run = validate(compose_cfg(command, overrides))
    assert run.command == command


@pytest.mark.parametrize("group", ["model", "schedule", "logger"])
def test_every_group_option_composes(group):
    for option in GROUP_OPTIONS[group]:
        overrides = [f"{group}={option}"]
        if option == "mog_student":
            overrides += ["dataset.layout=pair", "dataset.n_components=2"]
        if option.startswith(("dddm_unet", "default_cifar10")):
            overrides += ["dataset=cifar10"]
        if option.startswith(("egnn", "default_qm9")):
            overrides += ["dataset=qm9"]
        run = validate(compose_cfg("train", overrides))
        expected = {"default_cifar10": "dddm_unet", "default_qm9": "egnn"}.get(option, option.removesuffix("_small"))
        assert getattr(run, group).name == expected


@pytest.mark.parametrize("option", GROUP_OPTIONS["sampler"])
def test_every_sampler_composes(option):
    assert validate(compose_cfg("sample", [f"sampler={option}"])).sampler.name == option


@pytest.mark.parametrize("option", GROUP_OPTIONS["experiment"])
def test_every_experiment_composes(option):
    # The sampler tables' sweeps are `rtkrun sample` experiments, T7 is also `rtkrun search`'s; the rest train.
    commands = {"t7_mog": ("sample", "search")}
    for name in ("t1_mog", "t1_mog_dddm", "t1_mog_energy", "t2_mog", "mog_tables_base"):
        commands[name] = ("sample",)
    for command in commands.get(option, ("train",)):
        validate(compose_cfg(command, [f"experiment={option}"]))


def test_dataset_brings_its_defaults():
    run = validate(compose_cfg("train", ["dataset=mog"]))
    assert (run.model.name, run.schedule.name, run.trainer.objective) == ("mog_mlp", "cosine", "dddm")
    assert set(run.evaluation.samplers) == {"ddim50", "ddpm200", "dddm1", "dddm2", "dddm_sc10"}  # issue 16 item 7
    run = validate(compose_cfg("train", ["dataset=cifar10"]))
    assert (run.model.name, run.model.channels, run.schedule.name) == ("dddm_unet", 128, "linear")
    assert (run.trainer.lr, run.trainer.batch_size, run.trainer.ema_decay) == (1e-4, 128, 0.9999)
    assert (run.trainer.distance, run.trainer.dddm_weight, run.trainer.precision) == (
        "pseudo_huber",
        "inverse_epoch",
        "bf16",
    )
    assert set(run.evaluation.samplers) == {"dddm1", "dddm2", "ddim35"}


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["+model.widht=3"], "unknown config key 'model.widht'"),
        (["dataset.dim=abc"], "dataset.dim"),
        (["dataset.dim=-2"], "dataset.dim must be >= 1"),
        (["trainer.lr=0"], "trainer.lr must be > 0"),
        (["trainer.max_steps=-5"], "trainer.max_steps must be >= 1"),
        (["trainer.objective=foo"], "trainer.objective='foo' is unknown"),
        (["+evaluation.samplers.bad={name:ddim,steps:0}"], "evaluation.samplers.bad.steps must be >= 1"),
        (["model=egnn"], "model=egnn does not fit dataset=mog; it serves qm9"),
        (["dataset=qm9", "dataset.split=dev"], "dataset.split='dev' is unknown"),
        (["dataset=qm9", "dataset.source=figshare"], "source=figshare needs dataset.root"),
        (["dataset=qm9", "model.graph=sparse"], "model.graph='sparse' is unknown"),
    ],
)
def test_bad_values_name_the_key(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg("train", overrides))
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_sample_compile_mode_is_checked():
    assert validate(compose_cfg("sample", ["compile=reduce-overhead"])).compile == "reduce-overhead"
    with pytest.raises(ConfigError, match="compile='fast' is unknown; choose one of none, default"):
        validate(compose_cfg("sample", ["compile=fast"]))


def test_sampler_step_size_must_be_positive():
    with pytest.raises(ConfigError, match="sampler.steps must be >= 1"):
        validate(compose_cfg("sample", ["sampler.steps=0"]))
    with pytest.raises(ConfigError, match="sampler.eta must be >= 0"):
        validate(compose_cfg("sample", ["sampler.eta=-1"]))


@pytest.mark.parametrize("option", GROUP_OPTIONS["sweep"])
def test_every_sweep_composes_with_its_params(option):
    command = "train" if option == "seeds" else "sample"
    cfg = compose_cfg(command, [f"sweep={option}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params, option
    validate(cfg)


@pytest.mark.parametrize("preset,target", [("slurm", "SlurmLauncher"), ("local", "LocalLauncher")])
def test_launcher_presets_compose(preset, target):
    launcher = compose_cfg("sample", [f"hydra/launcher={preset}"], return_hydra_config=True).hydra.launcher
    assert launcher._target_.endswith(target) and launcher.timeout_min > 0
    if preset == "slurm":
        assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0


@pytest.mark.parametrize("group", ["trainer", "evaluation"])
def test_every_schema_key_is_in_every_option_s_yaml(group):
    """Each trainer and evaluation option lists every key of its schema, so any key can be
    overridden on the command line (Hydra rejects a key the YAML lacks) and the YAML is the
    place a user reads the defaults."""
    import dataclasses

    from rtkrun.config import EvaluationConfig, TrainerConfig

    schema = {f.name for f in dataclasses.fields({"trainer": TrainerConfig, "evaluation": EvaluationConfig}[group])}
    for option in GROUP_OPTIONS[group]:
        dataset = {"cifar10": "cifar10", "qm9": "qm9", "qm9_smoke": "qm9", "qm9_cpu": "qm9", "t8_qm9": "qm9"}.get(
            option, "mog"
        )
        composed = compose_cfg("train", [f"dataset={dataset}", f"{group}={option}"])[group]
        assert schema <= set(composed), (option, sorted(schema - set(composed)))


RESEARCH_KEYS = ["trainer.optimizer=sgd", "trainer.fixed_t=0.5", "trainer.fresh_data=true"]
RESEARCH_KEYS += ["trainer.rao_blackwell=true"]


@pytest.mark.parametrize("override", RESEARCH_KEYS)
def test_trainer_research_keys_override_on_every_dataset(override):
    for dataset in ("mog", "qm9", "cifar10"):
        key, value = override.split("=")
        run = validate(compose_cfg("train", [f"dataset={dataset}", override]))
        assert str(getattr(run.trainer, key.split(".")[1])).lower() == value


@pytest.mark.parametrize("choice", ["qm9_smoke", "none"])
def test_an_evaluation_choice_replaces_the_experiment_s_samplers(choice):
    """`experiment=qm9_cpu evaluation=qm9_smoke` runs qm9_smoke's samplers only (the experiment's
    DDPM-1000 used to be merged in), and evaluation=none runs none."""
    chosen = compose_cfg("train", ["dataset=qm9", f"evaluation={choice}"]).evaluation
    composed = compose_cfg("train", ["experiment=qm9_cpu", f"evaluation={choice}"]).evaluation
    assert dict(composed.samplers) == dict(chosen.samplers)
    assert composed.n_samples == chosen.n_samples
    assert set(compose_cfg("train", ["experiment=qm9_cpu"]).evaluation.samplers) == {"ddpm1000", "ddim50", "dddm2"}


def test_no_experiment_writes_evaluation_samplers_into_its_body():
    """An experiment picks its evaluation as a group option: samplers written in its body would be
    merged into whatever evaluation the user chooses after it."""
    import yaml

    for path in sorted((Path(CONF_DIR) / "experiment").glob("*.yaml")):
        body = yaml.safe_load(path.read_text()) or {}
        assert "samplers" not in (body.get("evaluation") or {}), path.name


@pytest.mark.parametrize("command", ["train", "sample", "evaluate", "diagnose", "report", "bench"])
def test_help_describes_every_key_in_one_line(command):
    """`rtkrun <command> --help` lists each key with its value and what it is, read from the
    comments on the schema fields: a field added without one fails here."""
    from rtkrun.commands import COMMANDS
    from rtkrun.config_help import command_help

    for dataset in ("mog", "qm9", "cifar10"):
        extra = {"evaluate": ["samples=x.npz"], "diagnose": ["ckpt=x"], "sample": ["sampler=rtk_mala"]}.get(command, [])
        cfg = compose_cfg(command, [f"dataset={dataset}", *extra] if command not in ("report", "bench") else extra)
        text = command_help(command, COMMANDS[command].help, cfg)
        keys = text.split("keys (key=value; the composed value, then what it is):\n")[1].split("\n\n")[0]
        for line in keys.splitlines():
            assert len(line.split(None, 2)) == 3, (command, dataset, line)  # key, value, description
        groups = text.split("groups (")[1].split("\n\n")[0]
        assert ("sampler " in groups) == (command in ("sample", "diagnose")), groups  # only the groups it composes


@pytest.mark.parametrize("name", ["ddpm", "ddim", "pf_ode", "dddm", "rtk_mala", "rtk_uld"])
def test_a_sampler_schema_read_from_the_source_is_its_function_s_signature(name):
    """rtkrun/schemas/samplers.py reads each sampler's keyword settings from its source file (so a
    config is checked without importing torch): the fields must be what the imported function
    declares, names, types and defaults, in order."""
    import dataclasses
    import inspect
    import typing

    from rtkrun.samplers import SAMPLERS

    schema, fn, _ = SAMPLERS[name]
    hints = typing.get_type_hints(fn)
    declared = [
        (p.name, hints[p.name], p.default)
        for p in inspect.signature(fn).parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.name not in ("generator", "callback")
    ]
    fields = dataclasses.fields(schema)
    assert [(f.name, f.type, f.default) for f in fields[1:-1]] == declared
    assert (fields[0].name, fields[0].default, fields[-1].name) == ("name", name, "nfe")


def test_bad_values_and_help_are_answered_without_importing_torch(tmp_path):
    """A value error, a missing checkpoint, a missing tracker and `train --help` need no torch: the schemas
    (rtkrun/schemas/), the validation and the run-directory checks import none, so the answer
    comes in about a second and no run directory is made."""
    import importlib.util
    import subprocess
    import sys

    probe = (
        "import contextlib, io, sys\n"
        "from rtkrun import cli\n"
        "for args in (['train', 'dataset.dim=-1'], ['sample', 'ckpt=missing_run'], ['train', '--help'],\n"
        "             ['sample', 'sampler=rtk_mala', 'sampler.segments=0'], ['train', 'logger=wandb']):\n"
        "    err, code = io.StringIO(), 0\n"
        "    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            cli.main(args)\n"
        "        except SystemExit as e:\n"
        "            code = e.code\n"
        "    print(code, err.getvalue().strip())\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "2 rtkrun: error: dataset.dim must be >= 1, got -1", lines
    assert lines[1].startswith("2 rtkrun: error: checkpoint not found: missing_run"), lines
    assert lines[2].strip() == "0", lines  # the help page went to stdout
    assert lines[3] == "2 rtkrun: error: sampler.segments must be >= 1, inner_steps and warmup_steps >= 0", lines
    if importlib.util.find_spec("wandb") is None:  # as in CI: the tracker is refused before any work
        assert lines[4] == "2 rtkrun: error: logger=wandb needs the wandb package: pip install 'rtkrun[wandb]'"
    assert lines[-1] == "torch imported: False", proc.stdout
    assert not (tmp_path / "outputs").exists()  # nothing written


def test_every_implementation_registry_holds_exactly_the_schemas_validation_knows():
    """Validation reads rtkrun/schemas/ (no torch); building reads the implementations'
    registries. The two must name the same options with the same schema classes."""
    from rtkrun.config import GROUPS, NOISE_KINDS
    from rtkrun.data import DATASETS
    from rtkrun.diffusion.schedules import SCHEDULES
    from rtkrun.models import MODELS
    from rtkrun.samplers import SAMPLERS
    from rtkrun.seeding import NOISE

    for group, registry in (("dataset", DATASETS), ("model", MODELS), ("schedule", SCHEDULES), ("sampler", SAMPLERS)):
        assert {name: entry[0] for name, entry in registry.items()} == GROUPS[group], group
    assert tuple(NOISE) == NOISE_KINDS


def test_values_of_another_type_are_converted_as_omegaconf_converts_them():
    # quoted numbers are strings and 1 is an int: the direct path leaves them to OmegaConf
    run = validate(compose_cfg("train", ["trainer.lr='0.5'", "trainer.weight_decay=1", "trainer.max_steps='7'"]))
    assert (run.trainer.lr, run.trainer.weight_decay, run.trainer.max_steps) == (0.5, 1.0, 7)
    assert (type(run.trainer.lr), type(run.trainer.weight_decay), type(run.trainer.max_steps)) == (float, float, int)
    with pytest.raises(ConfigError, match="bad value for 'trainer.max_steps'"):
        validate(compose_cfg("train", ["trainer.max_steps=true"]))
