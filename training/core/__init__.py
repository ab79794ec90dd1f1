"""The training library: what every task script shares.

The task scripts (``training.train_pulse``, ``train_image``, ``train_radio``, ``train_iact``) are thin
command lines over these modules and import nothing from one another:

* :mod:`training.core.onnx_export`: one checked ONNX export (torch vs ONNX Runtime on given inputs).
* :mod:`training.core.runtime`: one ONNX Runtime runner for every exported file.
* :mod:`training.core.checkpoint`: one ``model.pt`` format (task, config, state_dict, extras).
* :mod:`training.core.loop`: the AdamW + one-cycle training loop, batched prediction, run-folder history.
* :mod:`training.core.cards`: JSON cards written atomically, and their provenance blocks (command,
  seeds, data files by sha256 with the events used per split).
* :mod:`training.core.metrics`: ROC, efficiency curves and A50.
* :mod:`training.core.plots`: training-history and efficiency plots.
* :mod:`training.core.recorded`: recorded runs (``trigger.runfile``) as training data: seeded splits,
  chunked streaming, a shuffle buffer for recordings larger than memory.
"""
