"""Fixtures of the training tests: the tiny stack, built once per test module."""

import pytest

from tests.training.helpers import build_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    return build_stack(tmp_path_factory.mktemp("train_stack"))
