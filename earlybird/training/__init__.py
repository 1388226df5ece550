"""Training: the ``Trainer`` (``trainer``), the SGD recipe (``recipe``), low precision
(``precision``) and data parallelism (``distributed``)."""
