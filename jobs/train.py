"""Ray job entry point for ``train``: ``ray job submit --working-dir . -- python jobs/train.py
--features /shared/emodb-prepared --feature-set mfcc --model cnn1d --output /shared/models/cnn1d``.

Same arguments as ``ser-ray train``; inside a job, Ray is joined through RAY_ADDRESS.
"""

import sys

from ser_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
