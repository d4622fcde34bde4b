"""find_resume: which step dir a pretraining run resumes from."""

from __future__ import annotations

import pytest
from helpers.checkpoints import tiny_bert_config, write_step_dir

from bertscale.errors import CheckpointError
from bertscale.model import BertForPreTraining
from bertscale.pretrain.checkpoint import find_resume


def test_find_resume(tmp_path):
    assert find_resume("auto", tmp_path / "fresh") is None
    assert find_resume("never", tmp_path) is None
    step_dir = write_step_dir(tmp_path, BertForPreTraining(tiny_bert_config()))
    for resume, output_dir in (("auto", tmp_path), (str(tmp_path), tmp_path / "other")):
        with pytest.raises(CheckpointError, match=rf"{step_dir}: no deepspeed/ engine state"):
            find_resume(resume, output_dir)
    (step_dir / "deepspeed").mkdir()
    assert find_resume("auto", tmp_path) == step_dir
    assert find_resume(str(tmp_path / "checkpoints"), tmp_path / "other") == step_dir
