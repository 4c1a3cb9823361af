"""Ray job entry point for ``tune``: ``ray job submit --working-dir . -- python jobs/tune.py
--features /shared/emodb-prepared --space configs/tune_emodb.yaml --output /shared/sweeps/emodb``.

Same arguments as ``ser-ray tune``; inside a job, Ray is joined through RAY_ADDRESS.
"""

import sys

from ser_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
