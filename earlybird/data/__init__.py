"""Data: image sets in memory (``images``), their batches (``batches``), the datasets
(``datasets``) and the CIFAR models (``models``)."""
