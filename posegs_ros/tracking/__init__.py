"""Per-frame camera tracking: dense optical flow, the robust pose solver, the tracker and two-view initialization."""
