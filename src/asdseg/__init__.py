"""SlicerASDSeg engine: I/O with geometry kept, networks, sliding-window inference, metrics and
the registry of shipped models. Pure Python (torch, numpy, SimpleITK); nothing here imports Slicer.
"""

__version__ = "0.1.0"
