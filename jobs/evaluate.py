"""Ray job entry point for ``evaluate``: ``ray job submit --working-dir . -- python jobs/evaluate.py
--model /shared/models/cnn1d --features /shared/ravdess-prepared --output /shared/reports/cnn1d-on-ravdess``.

Same arguments as ``ser-ray evaluate``; inside a job, Ray is joined through RAY_ADDRESS.
"""

import sys

from ser_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
