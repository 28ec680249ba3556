"""MPT trainer: stream a store, synthesise heatmaps on the device, pre-train, fine-tune, evaluate.

Never imports dask or smplx: it runs on GPU nodes that have neither.
"""

__version__ = "0.1.0"
