"""Ray job entry point for ``prepare``: ``ray job submit --working-dir . -- python jobs/prepare.py
--input s3://bucket/corpus --corpus auto --features mfcc --output /shared/run1``.

Same arguments as ``ser-ray prepare``; inside a job, Ray is joined through RAY_ADDRESS.
"""

import sys

from ser_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
