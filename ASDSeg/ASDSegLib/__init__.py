"""Qt-free parts of the ASDSeg module: MRML <-> engine conversions and the segmentation logic.

Nothing here imports Qt, so tests drive it against the real Slicer core libraries
(``slicer-core``) and the module's widget stays thin glue.
"""
