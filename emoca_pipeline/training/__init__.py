"""Training jobs (PyTorch Lightning + MLflow): EMOCA's stages and the emotion networks.

Layout: :mod:`.settings` (pydantic settings from YAML, one-line errors, JSON Schema) and
:mod:`.fit` (the fit job every training job shares: checkpoints, early stopping, Trainer,
best weights, training.json, MLflow run); then per model a settings, data, Lightning module
and job module: ``emoca_settings``, ``emoca_data``, ``emoca_module``, ``emoca_job``
(:func:`~emoca_pipeline.training.emoca_job.train_emoca`) and ``emotion_settings``,
``emotion_data``, ``emotion_module``, ``emotion_job``
(:func:`~emoca_pipeline.training.emotion_job.train_emotion`).

Import the submodules directly: they pull in Lightning and MLflow, which the rest of the
package does not need.
"""
