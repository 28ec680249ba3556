"""One consistent command line across `mpt-data` and `mpt-train`, checked by walking every click command:
every option has help, an option name means the same kind of value everywhere, devices and precisions are
choices, batch sizes are `--batch-size`, and `--out` is a folder unless its help says it is a file."""

from __future__ import annotations

from collections import defaultdict

import click
import pytest

from mpt_data.cli import main as data_cli
from mpt_data.console import DEVICES, PRECISIONS
from mpt_train.cli import main as train_cli


def _commands():
    """(tool, command name, command) for both groups and every command in them."""
    out = []
    for tool, group in (("mpt-data", data_cli), ("mpt-train", train_cli)):
        out.append((tool, "", group))
        ctx = click.Context(group)
        out += [(tool, name, group.get_command(ctx, name)) for name in group.list_commands(ctx)]
    return out


def _options():
    return [(f"{tool} {name}".strip(), p, cmd) for tool, name, cmd in _commands() for p in cmd.params
            if isinstance(p, click.Option)]


def _kind(option: click.Option) -> tuple:
    """What an option takes (a flag, one of some choices, a file or a folder, a number, text), whether it may
    be repeated or not."""
    t = option.type
    if option.is_flag:
        kind: tuple = ("flag",)
    elif isinstance(t, click.Choice):
        kind = ("choice", tuple(t.choices))
    elif isinstance(t, click.Path):
        kind = ("path", "file" if not t.dir_okay else "folder" if not t.file_okay else "any")
    else:
        kind = (t.name,)
    return kind


def test_the_walk_sees_both_tools_and_their_commands():
    names = {f"{tool} {name}" for tool, name, _ in _commands()}
    for expected in ("mpt-data build", "mpt-data freeze", "mpt-data bench", "mpt-data images", "mpt-train pretrain",
                     "mpt-train finetune", "mpt-train train-pose", "mpt-train evaluate-images", "mpt-train predict"):
        assert expected in names
    assert len(_options()) > 100


def test_every_option_has_help():
    missing = [f"{where} {'/'.join(p.opts)}" for where, p, _ in _options() if not (p.help or "").strip()]
    assert missing == []


def test_an_option_name_takes_the_same_kind_of_value_everywhere():
    kinds = defaultdict(dict)
    for where, p, _ in _options():
        for name in p.opts:
            if name != "--out":  # a folder, or a file its help names: checked below
                kinds[name][where] = _kind(p)
    differing = {name: by for name, by in kinds.items() if len(set(by.values())) > 1}
    assert differing == {}


def test_out_is_a_folder_or_its_help_says_file():
    outs = [(where, p) for where, p, _ in _options() if "--out" in p.opts]
    assert len(outs) >= 10
    for where, p in outs:
        assert isinstance(p.type, click.Path), where
        folder = not p.type.file_okay and p.type.dir_okay
        assert folder or (not p.type.dir_okay and "file" in p.help.lower()), (where, p.help)


def test_devices_and_precisions_are_the_same_choices_everywhere():
    devices = [(where, p) for where, p, _ in _options() if "--device" in p.opts]
    precisions = [(where, p) for where, p, _ in _options() if "--precision" in p.opts]
    assert {w for w, _ in devices} >= {"mpt-train pretrain", "mpt-train finetune", "mpt-train train-pose",
                                       "mpt-train evaluate", "mpt-train evaluate-images", "mpt-train predict",
                                       "mpt-train bench"}
    assert {w for w, _ in precisions} >= {"mpt-train pretrain", "mpt-train finetune", "mpt-train train-pose"}
    for where, p in devices:
        assert isinstance(p.type, click.Choice) and tuple(p.type.choices) == DEVICES, where
    for where, p in precisions:
        assert isinstance(p.type, click.Choice) and tuple(p.type.choices) == PRECISIONS, where


def test_batch_sizes_are_batch_size_and_no_option_is_batch():
    names = {name for _, p, _ in _options() for name in p.opts}
    assert "--batch" not in names
    batch = [where for where, p, _ in _options() if "--batch-size" in p.opts]
    assert {"mpt-data bench", "mpt-data build", "mpt-train evaluate", "mpt-train finetune"} <= set(batch)


@pytest.mark.parametrize("command", ["pretrain", "finetune", "train-pose"])
def test_the_training_commands_share_the_loop_options(command):
    ctx = click.Context(train_cli)
    opts = {name for p in train_cli.get_command(ctx, command).params for name in p.opts}
    assert {"--steps", "--epochs", "--batch-size", "--lr", "--warmup-frac", "--grad-clip", "--log-every",
            "--checkpoint-every", "--val-every", "--no-progress", "--compile", "--device", "--precision", "--resume",
            "--overwrite", "--seed", "--workers"} <= opts


def test_steps_for_epochs_counts_samples_of_all_ranks():
    from mpt_train.cli import _steps_for_epochs
    from mpt_train.trainer import TrainConfig

    cfg = TrainConfig.finetune(out="x", batch_size=8)
    assert _steps_for_epochs(cfg, None, 1000, 1, "mix.yaml") is cfg
    assert _steps_for_epochs(cfg, 2.0, 1000, 1, "mix.yaml").steps == 250  # 2 x 1000 images / 8
    assert _steps_for_epochs(cfg, 1.0, 1000, 4, "mix.yaml").steps == 31  # 1000 / (8 x 4) = 31.25
    assert _steps_for_epochs(cfg, 0.001, 1000, 1, "mix.yaml").steps == 1
    with pytest.raises(click.UsageError, match="mix.yaml: 20 samples, fewer than one batch of 8 on each of 4"):
        _steps_for_epochs(cfg, 1.0, 20, 4, "mix.yaml")


def test_the_evaluate_table_lines_up():
    from mpt_train.cli import _figures_table

    table = _figures_table({"clean": {"mpjpe": 92.31, "pa_mpjpe": 59.2, "samples": 960.0},
                            "mean_camera_frame": {"mpjpe": 1247.94, "pa_mpjpe": 196.6}})
    lines = table.splitlines()
    assert [line.split() for line in lines] == [["mpjpe", "pa_mpjpe"], ["clean", "92.3", "59.2"],
                                               ["mean_camera_frame", "1247.9", "196.6"]]
    assert len({len(line) for line in lines}) == 1  # every column right-aligned to the same end
    assert lines[1].index("92.3") + 4 == lines[2].index("1247.9") + 6 == lines[0].index("mpjpe") + 5


def _typical_use(group) -> list[list[str]]:
    """The command lines of a group's "Typical use" help (continuation lines joined, comments dropped)."""
    import shlex

    text = group.help.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in text.splitlines()
            if line.strip().startswith(("mpt-data ", "mpt-train "))]


@pytest.mark.parametrize("group", [data_cli, train_cli], ids=["mpt-data", "mpt-train"])
def test_the_typical_use_in_help_names_real_options_and_gives_the_required_ones(group):
    lines = _typical_use(group)
    assert len(lines) >= 4
    ctx = click.Context(group)
    for line in lines:
        for words in " ".join(line).split(" && "):  # `a && b` runs two commands
            tool, name, *args = words.split()
            cmd = group.get_command(ctx, name)
            assert cmd is not None and tool == ("mpt-data" if group is data_cli else "mpt-train"), words
            known = {o for p in cmd.params for o in p.opts}
            given = {a for a in args if a.startswith("--")}
            assert given <= known, (words, given - known)
            required = {p.opts[0] for p in cmd.params if isinstance(p, click.Option) and p.required}
            assert required <= given, (words, required - given)
            if name == "pretrain":
                assert len(given & {"--steps", "--epochs"}) == 1, words
