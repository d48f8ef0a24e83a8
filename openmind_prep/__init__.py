"""openmind-prep: nnssl-exact OpenMind preprocessing to Zarr v3 / WebDataset on Dask."""

__version__ = "0.1.0"
