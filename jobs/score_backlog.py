"""Ray job entry point for the nightly ``score`` run::

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/score_backlog.py --model /shared/models/cnn1d \\
        --input s3://calls/incoming/2026-11-23 --output s3://calls/reports \\
        --metadata s3://calls/incoming/2026-11-23.csv --customer-channel right

Same arguments as ``ser-ray score``; inside a job, Ray is joined through RAY_ADDRESS.
"""

import sys

from ser_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
