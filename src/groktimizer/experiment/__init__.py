"""The training pipeline: config schemas, data, models, the loop, checkpoints, outputs, W&B.

Depends on the library (``groktimizer``) and on the pipeline extra (Hydra, W&B, datasets,
scikit-learn); the library never imports from here.
"""
