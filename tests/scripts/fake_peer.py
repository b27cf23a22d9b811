"""A stand-in for an external peer method: ``python fake_peer.py IMAGE DISPARITY K FOCUS OUT [--fail_above_K X]``.

Writes a Gaussian-blurred copy of IMAGE (sigma = K / 4 px) as an 8-bit PNG at OUT; with ``--fail_above_K`` it
exits 3 with a message for larger K, to test that a failing peer fails only its own cases."""

import argparse
import sys

import cv2
import numpy as np

parser = argparse.ArgumentParser()
for name in ("image", "disparity", "K", "focus", "out"):
    parser.add_argument(name)
parser.add_argument("--fail_above_K", type=float, default=None)
args = parser.parse_args()
K = float(args.K)
if args.fail_above_K is not None and K > args.fail_above_K:
    print(f"fake peer: K {K} is above {args.fail_above_K}", file=sys.stderr)
    sys.exit(3)
disparity = np.load(args.disparity)
image = cv2.imread(args.image, cv2.IMREAD_COLOR)
assert disparity.shape == image.shape[:2], (disparity.shape, image.shape)
cv2.imwrite(args.out, cv2.GaussianBlur(image, (0, 0), max(K / 4, 0.1)))
