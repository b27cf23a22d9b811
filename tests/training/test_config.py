"""training/config.py: the YAML presets and the command line (precedence, validation, the gamma alias).

Parsing only: no model or data is loaded (the paths in :data:`tests.training.helpers.PATHS` do not exist).
"""

from __future__ import annotations

import pytest

from tests.training.helpers import PATHS, REPO, train_argv
from training.config import DEFAULT_CONFIG, build_parser, load_yaml_config, parse_args

PRESET = str(REPO / "configs" / "train_published.yaml")

pytestmark = pytest.mark.usefixtures("one_thread")

# The release README's training command (FreeButUselessSoul/bokehdiff), paths replaced.
README_COMMAND = ("--train_data_dir DATA --pretrained_model_name_or_path SG161222/RealVisXL_V5.0 "
                  "--train_batch_size 1 --output_dir logs_bokehdiff --mixed_precision no --opt_vae 1 "
                  "--max_train_steps 120000 --enable_xformers_memory_efficient_attention "
                  "--learning_rate 5e-5 --lr_scheduler cosine --lr_num_cycles 1 --lr_warmup_steps 20 --resolution 512 "
                  "--lpips --edge --lambda_lpips 5 --checkpointing_steps 60000 "
                  "--gan_loss_type multilevel_sigmoid_s --cv_type convnext --lambda_gan 0.1 --gan_step 30000").split()


def test_default_yaml_holds_every_option_and_presets_are_valid():
    parser = build_parser()
    options = {a.dest for a in parser._actions} - {"help", "config"}
    assert set(load_yaml_config(DEFAULT_CONFIG, parser)) == options
    for preset in (REPO / "configs").glob("train_*.yaml"):
        load_yaml_config(preset, parser)


def test_precedence_default_preset_cli(tmp_path):
    args = parse_args(train_argv(PATHS, tmp_path))
    assert args.rank == 4 and args.edge and args.adam_beta2 == 0.95  # preset, preset, default
    args = parse_args(train_argv(PATHS, tmp_path, "--rank", 2, "--no-edge"))
    assert args.rank == 2 and not args.edge


@pytest.mark.parametrize("content, message", [
    ("learning_rat: 0.1\n", "did you mean 'learning_rate'"),
    ("rank: eight\n", "key 'rank' must be an integer"),
    ("edge: 1\n", "key 'edge' must be true or false"),
    ("lr_scheduler: cosine_annealing\n", "must be one of"),
    ("checkpoints_total_limit: many\n", "key 'checkpoints_total_limit' must be an integer"),  # none on the CLI only
])
def test_bad_preset_keys_fail(tmp_path, content, message):
    preset = tmp_path / "bad.yaml"
    preset.write_text(content)
    with pytest.raises(ValueError, match=message):
        parse_args(["--config", str(preset), "--train_data_dir", "x", "--output_dir", "y"])


@pytest.mark.parametrize("flag, value, message", [
    ("--resolution", 72, "--resolution must be a multiple of 16"),
    ("--opt_vae", 2, "--opt_vae must be 0 or 1"),
    ("--checkpoints_total_limit", 0, "--checkpoints_total_limit"),
    # fp16 would share accelerate's one GradScaler between the generator and discriminator optimisers (unscaled
    # once per clip call -> "unscale_() has already been called"): refused up front, with the remedy.
    ("--mixed_precision", "fp16", "--mixed_precision fp16 is not supported.*--mixed_precision bf16"),
    ("--pisa_dropout", 1.0, r"--pisa_dropout must be in \[0, 1\)"),
    ("--gamma", 0, "--model_gamma must be > 0.*--gamma sets both"),  # the alias is named: it is what was given
])
def test_bad_flag_values_fail(tmp_path, flag, value, message):
    with pytest.raises(ValueError, match=message):
        parse_args(train_argv(PATHS, tmp_path, flag, value))


def test_fp16_in_a_preset_is_rejected_too(tmp_path):
    preset = tmp_path / "fp16.yaml"
    preset.write_text("mixed_precision: fp16\n")
    with pytest.raises(ValueError, match="--mixed_precision fp16 is not supported"):
        parse_args(["--config", str(preset), "--train_data_dir", "x", "--output_dir", "y"])


def test_preset_holds_the_readme_command():
    """Every setting of the README command is in the preset (gan_step shifted by one: the release tests
    `global_step > gan_step`, we test `step >= gan_step`)."""
    from_command = vars(parse_args(README_COMMAND))
    from_preset = vars(parse_args(["--config", PRESET, "--train_data_dir", "DATA", "--output_dir", "logs_bokehdiff"]))
    given = {token[2:] for token in README_COMMAND if token.startswith("--")}
    differ = {k: (from_command[k], from_preset[k]) for k in given if from_command[k] != from_preset[k]}
    assert differ == {"gan_step": (30000, 30001)}
    assert (from_preset["model_gamma"], from_preset["synthesis_gamma"], from_preset["pisa_compat"]) == (1.0, 2.2, True)
    assert (from_preset["pisa_segments"], from_preset["pisa_supersamples"]) == (5, 4)


def test_gamma_alias_and_specific_flags_combine_by_the_documented_rule(tmp_path):
    base = ["--train_data_dir", "d", "--output_dir", str(tmp_path)]
    g = lambda *extra: (lambda a: (a.model_gamma, a.synthesis_gamma, a.gamma))(parse_args(base + [str(e) for e in extra]))
    assert g() == (2.2, 2.2, None)
    assert g("--gamma", 1) == (1.0, 1.0, None)  # the alias sets both
    assert g("--model_gamma", 1) == (1.0, 2.2, None)
    assert g("--config", PRESET) == (1.0, 2.2, None)
    assert g("--config", PRESET, "--gamma", 2.2) == (2.2, 2.2, None)  # the command line overrides the preset
    with pytest.raises(ValueError, match="the command line: gamma 2.0 .* model_gamma 1.0"):
        g("--gamma", 2, "--model_gamma", 1)
    both = tmp_path / "both.yaml"
    both.write_text("gamma: 1.0\nsynthesis_gamma: 2.2\n")
    with pytest.raises(ValueError, match="both.yaml: gamma 1.0 .* synthesis_gamma 2.2"):
        g("--config", str(both))
    old = tmp_path / "old_train_config.yaml"  # a resolved config written before the split: one gamma
    old.write_text("gamma: 1.0\n")
    assert g("--config", str(old), "--synthesis_gamma", 2.2) == (1.0, 2.2, None)
    with pytest.raises(ValueError, match="--model_gamma must be > 0"):
        g("--model_gamma", 0)


def test_null_defaults_can_be_given_on_the_command_line_as_none(tmp_path, capsys):
    """`--checkpoints_total_limit` was documented "(null: all)" but an int flag could not take null; `none` (or
    `null`) now gives None on the command line, like null in a preset (also --pisa_seed, --lora_alpha,
    --brightness_cap). Other text is still an argparse error."""
    given = ("--checkpoints_total_limit", "none", "--pisa_seed", "NULL", "--lora_alpha", "none",
             "--brightness_cap", "null")
    args = parse_args(train_argv(PATHS, tmp_path, *given))
    assert (args.checkpoints_total_limit, args.pisa_seed, args.lora_alpha, args.brightness_cap) == (None,) * 4
    assert parse_args(train_argv(PATHS, tmp_path, "--checkpoints_total_limit", "3")).checkpoints_total_limit == 3
    with pytest.raises(SystemExit):
        parse_args(train_argv(PATHS, tmp_path, "--checkpoints_total_limit", "all"))
    assert "--checkpoints_total_limit: invalid int value: 'all'" in capsys.readouterr().err
