"""MPT data side: AMASS motion capture -> a frozen, sharded Zarr store of training pairs.

This package's top level imports nothing heavy, so `mpt_data.conventions` and
`mpt_data.schema` can be used by `mpt_train` on machines without dask or smplx.
"""

__version__ = "0.1.0"
