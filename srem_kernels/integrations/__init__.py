"""SREM inside other libraries' training loops, one module per library.

Each module is imported only when asked for (`import srem_kernels.integrations.open_clip`), and
none imports its library: installing or importing srem-kernels never pulls one in.

    open_clip   SREMClipLoss, open_clip's ClipLoss contract (docs/open_clip.md)
"""
