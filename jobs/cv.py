"""Ray job entry point for ``cv``: ``ray job submit --working-dir . -- python jobs/cv.py
--features /shared/emodb-prepared --feature-set egemaps --model logreg --protocol loso --output /shared/reports/emodb-loso``.

Same arguments as ``ser-ray cv``; inside a job, Ray is joined through RAY_ADDRESS.
"""

import sys

from ser_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["cv", *sys.argv[1:]]))
