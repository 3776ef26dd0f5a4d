"""Text-prompted grounding of chest CT findings (ReXGroundingCT-style).

Imaging half: CT preprocessing (HU → window [-600, 1500] → [0, 1], axial slices
resized with depth kept), synthetic chest phantoms with text-described findings,
a FiLM text-conditioned 3D U-Net, and sliding-window inference whose masks are
mapped back onto the original scan grid. Metrics live in
``ctray.metrics.segmentation``; volume I/O in ``ctray.io.volumes``.
"""
