"""embench and inspect_ai (PyPI ``inspect-ai``, the optional extra ``embench[inspect]``), both ways.

- :mod:`embench.inspectai.tasks`: every embench task with questions as an inspect task, ``embench/<task id>``,
  found by ``inspect eval`` through the package's ``inspect_ai`` entry point and scored by embench's judges;
- :mod:`embench.inspectai.export`: a finished ``embench score`` directory as inspect logs ``inspect view`` opens.
"""
