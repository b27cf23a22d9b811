"""Test helper, run by torchrun: ``inference_hf.py`` whose rank ``DIE_RANK`` is SIGKILLed when it starts
writing its file number ``DIE_AT_SAVE`` (1-based), as a preempted or crashed rank would be."""

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
    if os.environ.get("RANK") == os.environ["DIE_RANK"] and saves == int(os.environ["DIE_AT_SAVE"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return save_image(path, image, **kwargs)


inference.batch.save_image = save_or_die
sys.exit(inference_hf.main())
