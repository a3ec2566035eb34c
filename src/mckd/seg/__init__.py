"""3D segmentation for any dataset in the field's formats, laid out like the work it does.

From files to predictions, one module per step:

- ``labels``: what label values mean (conventions, declared classes and nested regions);
- ``cases``: reading and checking one case's files (images, labels, brain mask);
- ``layouts``, ``formats``: where a dataset's files are (case-folder layouts; nnU-Net,
  MSD, BraTS and layout files as a registry of detectors);
- ``grid``, ``preprocess``: the grid a model sees and the steps every case goes through,
  shared by the cache and inference;
- ``cache``, ``prepare``: ``mckd prepare seg`` and the cache it writes;
- ``dataset``: the ``seg`` dataset (alias ``brats``): crops for training, whole cases to evaluate;
- ``segment``: one case segmented on its own grid by a trained run;
- ``predict``, ``evaluate``, ``plot``: ``mckd predict``, ``mckd evaluate --data``, ``mckd plot-seg``.

The segmentation task (losses, metrics, sliding window) is :mod:`mckd.tasks.segmentation`.
Nothing is imported here: each command loads only what it uses.
"""
