"""ser-ray: speech emotion recognition as distributed batch jobs on Ray."""

__version__ = "0.1.0"
