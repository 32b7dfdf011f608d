"""The Triton kernel families, installed as fastconv.kernels: one file per family
(igemm.py, depthwise.py, grouped.py) on the shared host layer (_plan.py) and device
helpers (_common.py). Importing this package does not import triton; the family
modules do, when fastconv/_triton.py first calls them.
"""

# kernels/grouped.py's limit on channels per group (wider groups are triton_igemm's job),
# here so that the registry can say where the family applies without importing triton.
GROUPED_MAX_GROUP_WIDTH = 64
