"""The interactive refocusing app behind ``app.py`` (``make app``).

- :mod:`webapp.core`: scenes (photo + disparity), render options, preview / full-resolution renders, the
  disparity view with the focal plane marked, the focus-pull sweep. No Gradio here: plain numpy / torch.
- :mod:`webapp.ui`: the Gradio page and its callbacks (each turns bad input into a message on the page).
- :mod:`webapp.serve`: how the page is served (Host / Origin guard, upload cap, cache expiry, no server path).

Conventions as everywhere in the repository: images ``(3, H, W)`` float32 sRGB in [0, 1]; disparity
``(1, H, W)`` float32 in [0, 1], 1 = nearest; focus is a disparity value; ``K`` is the CoC radius in pixels of
the full-resolution photo per unit disparity.
"""
