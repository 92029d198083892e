"""The scene model: Gaussians, the exposure blur model (image formation and loss), keyframes."""
