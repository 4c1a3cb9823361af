"""The command itself: --version, `list`, and an example at the end of every --help that the
parser accepts."""

from __future__ import annotations

import shlex

import pytest

from ser_ray import __version__
from ser_ray.cli import EXAMPLES, build_parser, main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"ser-ray {__version__}"


def test_every_subcommand_help_ends_with_an_example_the_parser_accepts(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == set(EXAMPLES)
    for name in commands:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        help_text = capsys.readouterr().out.rstrip()
        assert help_text.endswith(EXAMPLES[name]), name
        argv = shlex.split(EXAMPLES[name])
        assert argv[:2] == ["ser-ray", name]
        assert parser.parse_args(argv[1:]).command == name


def test_list_names_everything_registered_with_its_doc(capsys):
    from ser_ray.corpora import CORPORA
    from ser_ray.features import available
    from ser_ray.labels import LABEL_SETS
    from ser_ray.models import available_models
    from ser_ray.learn.splits import PROTOCOLS

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    sections = {}
    for block in out.strip().split("\n\n"):
        head, *rows = block.splitlines()
        sections[head.rstrip(":")] = {r.split()[0]: r.split(None, 1)[1] for r in rows}
    assert set(sections["extractors"]) == set(available())
    assert set(sections["models"]) == set(available_models())
    assert set(sections["label-sets"]) == set(LABEL_SETS)
    assert set(sections["corpora"]) == set(CORPORA)
    assert set(sections["protocols"]) == set(PROTOCOLS)
    from ser_ray.learn.augment import available_steps

    assert set(sections["augment-steps"]) == set(available_steps()) >= {"telephone", "gain"}
    assert all(len(doc) > 10 for s in sections.values() for doc in s.values())
    assert sections["models"]["imagenet_cnn"].startswith("[torch] A torchvision image CNN")
    assert "optimistic" in sections["protocols"]["random-kfold"]
    assert main(["list", "models"]) == 0
    assert capsys.readouterr().out.startswith("models:\n")
