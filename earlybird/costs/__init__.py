"""Costs: FLOPs (``flops``), energy (``energy``), the cost ledger of a run (``ledger``) and the
paper's plots (``plots``)."""
