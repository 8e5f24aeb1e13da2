"""Use case: score comments with a model dir (:class:`~rulebert.inference.predict.Scorer`) and write a
submission."""
