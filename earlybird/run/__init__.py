"""The run folder: its files and exactly-once log (``runs``), atomic writes, checkpoints and
pruned models as plain data (``io``)."""
