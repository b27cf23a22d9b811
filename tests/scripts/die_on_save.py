"""Test helper: ``inference_hf.py`` whose rank ``DIE_RANK`` (default: the only process) gets signal ``DIE_SIGNAL``
(default SIGKILL) when it starts writing its file number ``DIE_AT_SAVE`` (1-based), as a preempted or crashed
rank would (SIGKILL), or as a scheduler stops a job (SIGTERM: the file being written is finished and recorded
first)."""

import os
import signal
import sys

import inference.batch
import inference_hf

saves = 0
save_image = inference.batch.save_image


def save_or_die(path, image, **kwargs):
    global saves
    saves += 1
    if os.environ.get("RANK", "0") == os.environ.get("DIE_RANK", "0") and saves == int(os.environ["DIE_AT_SAVE"]):
        os.kill(os.getpid(), signal.Signals[os.environ.get("DIE_SIGNAL", "SIGKILL")])
    return save_image(path, image, **kwargs)


inference.batch.save_image = save_or_die
sys.exit(inference_hf.main())
