"""The ingest plane: audio inputs -> manifest, feature tables, quarantine and summary. ``plan``
(inputs, corpora, units), ``units`` (one unit -> part files and marker, in Ray workers),
``engines`` (tasks, Ray Data), ``run`` (the driver: resume, finalise, summary)."""

from ser_ray.prepare.plan import iter_units, plan_inputs
from ser_ray.prepare.run import CONFIG_STAMP, run_prepare
from ser_ray.prepare.units import UnitProcessor

__all__ = ["CONFIG_STAMP", "UnitProcessor", "iter_units", "plan_inputs", "run_prepare"]
