"""Test helper, run by torchrun: ``prepare_data.py`` in a process that knows the tiny test segmenter
(tests/models/test_segment.py registers its architecture with transformers' auto classes on import)."""

import sys

import prepare_data
import tests.models.test_segment  # noqa: F401 - registers the tiny segmenter

sys.exit(prepare_data.main())
