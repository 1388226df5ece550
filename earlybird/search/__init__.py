"""The ticket search: the pruner (``pruner``), its settings (``config``), the tickets it draws
(``ticket``), masks from scores (``masks``, ``blocks``), the distance between masks
(``distance``), the detection rules (``criteria``), the optimizer carried to a pruned model
(``carry``) and the check's transfers (``offload``)."""
