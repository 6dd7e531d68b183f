"""anonymizer: de-identify the faces in image datasets before they are released.

The library works without Prefect: `anonymizer.pipeline.run_pipeline` chains the same steps that the
Prefect flow in `flows/` wraps as tasks.
"""

__version__ = "0.1.0"
