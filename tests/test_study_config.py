"""The study config: presets load, and a bad value is refused in one line naming the key, before any stage runs."""

import json

import pytest

from progsae.config import PRESETS, StudyConfig, load_study_config
from progsae.errors import ProgsaeError
from progsae.study.pipeline import eval_run_config


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_and_round_trip(preset):
    cfg = load_study_config(preset=preset)
    assert StudyConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "change, message",
    [
        ({"eval": {"metrics": ["recon", "fvu"]}}, r"unknown eval.metrics \['fvu'\]"),
        ({"eval": {"modes": ["prefix"]}}, r"unknown eval.modes \['prefix'\]"),
        ({"eval": {"interp_explainer": "gpt"}}, r"unknown eval.interp_explainer \['gpt'\]"),
        ({"train": {"granularities": [4096, 2048, 8192]}}, "must strictly increase"),
        ({"train": {"k": 64, "granularities": [32, 128]}}, "exceeds the smallest granularity"),
        ({"train": {"epoch": 2}}, r"unknown keys \['epoch'\] in 'train'"),
        ({"eval": {"interp_latents_per_band": 0}}, r"eval.interp_latents_per_band must be a positive integer, or null"),
        ({"eval": {"ce_contexts": -4}}, r"eval.ce_contexts must be a positive integer, or null"),
        ({"eval": {"recon_tokens": 0}}, r"eval.recon_tokens must be a positive integer, or null"),
    ],
)
def test_bad_values_are_refused_by_name(tmp_path, change, message):
    path = tmp_path / "study.json"
    path.write_text(json.dumps(change))
    with pytest.raises(ProgsaeError, match=message) as err:
        load_study_config(path)
    assert "\n" not in str(err.value)


def test_the_explainer_settings_reach_the_evaluation():
    cfg = StudyConfig.from_dict({"eval": {"interp_explainer": "llm", "interp_llm_url": "http://127.0.0.1:9/v1",
                                          "interp_llm_model": "m"}})
    run = eval_run_config(cfg, ["interp"])
    assert (run.explainer, run.llm_url, run.llm_model) == ("llm", "http://127.0.0.1:9/v1", "m")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"hook": "resid_post"}, "data: "),
        ({"storage_dtype": "int8"}, "data: unknown storage dtype 'int8'"),
        ({"device": "cuda"}, "set 'device' at the top level"),
    ],
)
def test_bad_data_section_is_refused(data, message):
    with pytest.raises(ProgsaeError, match=message):
        StudyConfig.from_dict({"data": data})


def test_the_data_section_is_what_collect_takes():
    from progsae.data.collect import CollectConfig

    cfg = StudyConfig.from_dict({"data": {"text_field": "body", "dataset_split": "validation", "first_position": 0}})
    assert isinstance(cfg.data, CollectConfig) and (cfg.data.text_field, cfg.data.dataset_split) == ("body", "validation")


def test_reproduce_refuses_an_unknown_until_stage(tmp_path, capsys):
    from progsae.cli import main

    assert main(["reproduce", "--preset", "quick", "--out", str(tmp_path), "--until", "zzz", "--no-progress"]) != 0
    err = capsys.readouterr().err.strip()
    assert "unknown stage 'zzz' for --until" in err and "\n" not in err


def test_version_and_every_verbs_help_exit_cleanly(capsys):
    from progsae import __version__
    from progsae.cli import VERBS, main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"progsae {__version__}"
    for verb in VERBS:
        with pytest.raises(SystemExit) as e:
            main([verb, "--help"])
        assert e.value.code == 0 and "usage: progsae" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--no-progress", "--quiet"])
def test_every_verb_with_a_progress_bar_takes_both_spellings(flag):
    from progsae.cli import build_parser

    required = {"train": ["--acts", "a", "--out", "o", "--latents", "8"], "eval": ["a=s", "--acts", "a"],
                "reproduce": ["--out", "o"], "collect": ["--out", "o"], "importance": ["s", "--acts", "a", "--out", "o"]}
    from progsae.commands.arguments import given_options

    def parsed(argv):  # as the verb sees it: train fills in the defaults of options not typed (record_given_options)
        args = build_parser().parse_args(argv)
        given_options(args)
        return args

    for verb, argv in required.items():
        assert parsed([verb, *argv, flag]).no_progress is True, verb
        assert parsed([verb, *argv]).no_progress is False, verb
