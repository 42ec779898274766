"""The vocabularies and capabilities live in resist.registry: config validation and the CLI read them
there, each algorithm's capabilities are class attributes of its class (read without importing torch),
and each model's task is declared once."""

from __future__ import annotations

import dataclasses
import inspect
import re
import subprocess
import sys

import pytest

from resist import registry
from resist.config import AlgoConfig, Config, vocabularies
from resist.presets import PRESETS, preset


@pytest.mark.parametrize("name", list(registry.ALGORITHMS))
def test_capabilities_read_from_source_are_the_class_attributes(name):
    cls = registry.algorithm_class(name)
    assert registry.capabilities(name) == {c: getattr(cls, c) for c in registry.CAPABILITIES}


@pytest.mark.parametrize("name", list(registry.ALGORITHMS))
def test_only_an_algorithm_with_whole_network_rounds_takes_them(name):
    params = inspect.signature(registry.algorithm_class(name)).parameters
    uses = registry.can(name, "uses_warmup")
    assert ("warmup_rounds" in params) == uses and ("cooldown_from" in params) == uses


def test_capability_lookups():
    assert registry.algorithms_that("partitions") == ("resist", "ensemble")
    assert registry.algorithms_that("syncs_every_step") == ("data_parallel",)
    assert not registry.can(None, "partitions") and not registry.can("gossip", "partitions")  # old run folders
    with pytest.raises(ValueError, match="unknown algorithm 'resits' \\(did you mean 'resist'\\?\\)"):
        registry.capabilities("resits")


def test_config_and_presets_do_not_import_torch():
    code = ("import sys, resist.config, resist.presets, resist.registry as r; resist.presets.preset('smoke');"
            "[r.capabilities(n) for n in r.ALGORITHMS]; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_every_literal_field_is_checked_against_its_vocabulary():
    """Each vocabulary-typed field refuses a name outside its Literal, in one line naming the choices."""
    for section in dataclasses.fields(Config):
        cls = section.default_factory
        for name, (allowed, _) in vocabularies(cls).items():
            with pytest.raises(ValueError, match=re.escape(f"choose one of: {', '.join(allowed)}") + "$"):
                Config().replace(**{f"{section.name}.{name}": "bogus"})


def test_vocabularies_cover_the_registry_tuples():
    algo = vocabularies(AlgoConfig)
    assert algo["compress"][0] == registry.CODECS and algo["partition"][0] == registry.PARTITIONS
    assert vocabularies(type(Config().run))["backend"] == (registry.BACKENDS, True)


def test_model_tasks_name_registered_models():
    from resist.models import STEMS, list_models
    from resist.models.yolo import DETECTION_MODELS

    assert set(registry.MODEL_TASKS) <= set(list_models())
    assert set(registry.models_for("detection")) == set(DETECTION_MODELS)
    assert tuple(STEMS) == registry.STEMS  # the ViT's patch geometry per stem name
    assert registry.model_task("paper_resnet101") == "classification"
    assert registry.model_task("mypackage.models:net") == "classification"  # a user's model


def test_presets_fit_their_models():
    for name in PRESETS:
        cfg = preset(name)
        assert registry.model_task(cfg.model.name) == cfg.data.task


def test_a_model_from_another_task_is_refused_in_one_line():
    with pytest.raises(ValueError, match="model yolo_resnet101 does not fit task classification"):
        preset("smoke").replace(**{"model.name": "yolo_resnet101"})
