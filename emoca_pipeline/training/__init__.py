"""Training jobs (PyTorch Lightning + MLflow): the emotion networks; EMOCA's stages later.

Import the submodules (:mod:`emoca_pipeline.training.emotion`,
:mod:`emoca_pipeline.training.config`, :mod:`emoca_pipeline.training.cli`) directly: they pull
in Lightning and MLflow, which the rest of the package does not need.
"""
