"""easlurm: EA-Adam population training of SR GANs on Slurm."""
__version__ = "0.1.0"
