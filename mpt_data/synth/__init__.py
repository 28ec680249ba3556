"""Synthetic stand-ins for the licensed inputs, so the whole pipeline runs without downloads.

``surface`` (the body's implicit surface and its mesh), ``rig`` (skinning weights and joint
regressor), ``body`` (SMPL / SMPL+H / AMASS model files), ``motion`` (AMASS-format motion
files), ``picture`` (`mpt-data synth`: all of the above plus a contact sheet) and ``images``
(`mpt-data synth-images`: SPIN-format image datasets rendered from the synthetic body). The
pipeline stages in ``mpt_data`` read their outputs exactly as they read the real files.
"""
