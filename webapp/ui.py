"""The Gradio page of ``app.py`` and its callbacks.

:class:`Callbacks` holds what the server knows (renderer factories, the startup scene, the output folder) and
has one method per page event; each takes and returns plain values (numpy images, numbers, file paths, text),
so the tests call them without a browser. Every callback turns a failure into a message in the page's status
line (``#status``) and leaves the other outputs as they were, so one bad upload or render never stops the
server or another user's session. :func:`build_app` lays out the page and wires the events.

Page: the photo (click to focus) | the render (a preview at most ``preview_side`` px, smaller for strong blur:
:meth:`webapp.core.Scene.preview_scale`; shown at full size) | the
disparity with the focal plane (green: CoC radius <= 1 px) and the clicked pixel (red cross) | the focus value.
Controls: renderer, K, aperture blades and rotation, highlight gain and threshold; "Render full resolution"
(PNG download), "Focus pull" (animated GIF of a near-to-far sweep, at preview resolution); uploads.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping

import gradio as gr

from webapp.core import (
    BLADES_MAX, HIGHLIGHT_GAIN_RANGE, K_RANGE, PREVIEW_SIDE, PREVIEW_SIDE_MIN, RendererFactory, RenderOptions, Scene,
    UploadError, demo_scene, disparity_view, focus_at, focus_sweep, initial_focus, render, save_render, shrink,
    to_uint8, upload_scene, write_animation,
)
from webapp.serve import DELETE_CACHE

# Longer side (px) of the render and disparity images sent to the page: large uploads are shown reduced (the
# page scales them to its layout anyway); the photo itself is sent at full size, so clicks land on its pixels.
DISPLAY_SIDE = 768
# Frames of the focus pull (each a preview render; the GIF plays them forward and back).
FOCUS_PULL_FRAMES = 8


@dataclass
class Session:
    """One browser session's state: the scene, the focal disparity, the clicked pixel ``(x, y)`` (or None) and
    the session's random output token (its files go in ``renders/<token>/``, ``focus_pulls/<token>/``; the token
    stays on the server, so no other client can name them)."""

    scene: Scene
    focus: float
    xy: tuple[int, int] | None = None
    token: str = field(default_factory=lambda: secrets.token_urlsafe(16))


def _error_text(error: Exception) -> str:
    kind = "" if isinstance(error, (UploadError, ValueError)) else f"{type(error).__name__}: "
    if isinstance(error, OSError) and error.filename:  # the file's name only: no server path on the page
        return f"**Error:** {kind}{error.strerror or 'cannot access'}: {Path(str(error.filename)).name}"
    return f"**Error:** {kind}{error}"


def _notes_text(scene: Scene) -> str:
    return "\n".join(f"- note: {note}" for note in scene.notes)


class Callbacks:
    """The page's event handlers.

    Args:
        factories: renderer name -> :data:`webapp.core.RendererFactory` (``classical`` at least).
        output_dir: the only folder the app writes (full-resolution PNGs and focus pulls go in it).
        initial_scene: the scene a new session starts with (default: the bundled demo).
        initial_options: the controls' starting values.
        focus_choice: ``choose_focus`` keywords for the starting focus (``focus_xy``, ``focus_disparity``, ...).
        preview_side: longer side (px) of the preview renders.
        depth_estimator: estimates disparity for uploads without a map (``models.depth.DepthEstimator``), or None.
    """

    def __init__(self, factories: Mapping[str, RendererFactory], output_dir: str | Path, *,
                 initial_scene: Scene | None = None, initial_options: RenderOptions | None = None,
                 focus_choice: dict | None = None, preview_side: int = PREVIEW_SIDE,
                 depth_estimator: Callable | None = None):
        if "classical" not in factories:
            raise ValueError("the app needs the classical renderer (the offline default)")
        if preview_side < PREVIEW_SIDE_MIN:
            raise ValueError(f"preview_side must be >= {PREVIEW_SIDE_MIN} px, got {preview_side}")
        self.factories = dict(factories)
        self.output_dir = Path(output_dir)
        self.initial_scene = initial_scene if initial_scene is not None else demo_scene()
        self.initial_options = (initial_options or RenderOptions()).validated(list(self.factories))
        self.focus_choice = dict(focus_choice or {})
        self.preview_side = int(preview_side)
        self.depth_estimator = depth_estimator
        self.focus_pull_frames = FOCUS_PULL_FRAMES

    # ------------------------------------------------------------------------------------------------------
    def options(self, renderer, K, blades, rotation_deg, highlight_gain, highlight_threshold) -> RenderOptions:
        """The controls' values as validated :class:`RenderOptions` (``ValueError`` names a bad control)."""
        return RenderOptions(str(renderer), float(K), int(round(float(blades))), float(rotation_deg),
                             float(highlight_gain), float(highlight_threshold)).validated(list(self.factories))

    def _view(self, session: Session, options: RenderOptions, status: str = ""):
        """(render, disparity view, focus, focus text, status) for the session: the render computed at preview
        scale, both images sent at most DISPLAY_SIDE px on the longer side."""
        scene = session.scene
        scale = scene.preview_scale(self.preview_side, options.K, session.focus)
        image = render(scene, options, session.focus, self.factories[options.renderer], scale)
        where = f" at pixel ({session.xy[0]}, {session.xy[1]})" if session.xy is not None else ""
        info = (f"focus disparity **{session.focus:.4f}**{where} of {scene.name} ({scene.size[1]}x{scene.size[0]}); "
                f"preview rendered at {scale:.2f}x")
        return (shrink(to_uint8(image), DISPLAY_SIDE),
                disparity_view(scene, session.focus, options.K, session.xy, max_side=DISPLAY_SIDE),
                round(session.focus, 4), info, status)

    def _new_session(self, scene: Scene, choice: dict | None = None, keep: Session | None = None) -> Session:
        """A session on ``scene`` at its initial focus; with ``keep``, it keeps that session's output token."""
        focus, xy = initial_focus(scene, **(choice or {}))
        return Session(scene, focus, xy) if keep is None else replace(keep, scene=scene, focus=focus, xy=xy)

    def _startup_session(self, keep: Session | None = None) -> Session:
        """A session on the startup scene at the startup focus (page load, "demo", or an event without one)."""
        return self._new_session(self.initial_scene, self.focus_choice, keep)

    # ------------------------------------------------------------------------------------------------------
    # Events. Scene events return (session, photo, *view); view events return (session, *view).
    # ------------------------------------------------------------------------------------------------------
    def start(self, *controls):
        """Page load: a new session on the startup scene at the startup focus."""
        try:
            session = self._startup_session()
            return (session, to_uint8(self.initial_scene.image),
                    *self._view(session, self.options(*controls), _notes_text(self.initial_scene)))
        except Exception as error:  # noqa: BLE001 - shown on the page; the server keeps serving
            return (None, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), _error_text(error))

    def click(self, session: Session | None, renderer, K, blades, rotation_deg, highlight_gain, highlight_threshold,
              evt: gr.SelectData):
        """A click on the photo at ``evt.index = [x, y]`` (full-resolution pixels): focus there (``--focus_xy``)."""
        try:
            session = session or self._startup_session()
            controls = (renderer, K, blades, rotation_deg, highlight_gain, highlight_threshold)
            x, y = (int(v) for v in evt.index[:2])
            session = replace(session, focus=focus_at(session.scene, x, y), xy=(x, y))
            return (session, *self._view(session, self.options(*controls)))
        except Exception as error:  # noqa: BLE001
            return (session, gr.skip(), gr.skip(), gr.skip(), gr.skip(), _error_text(error))

    def rerender(self, session: Session | None, *controls):
        """A control changed: render the preview again at the same focus."""
        try:
            session = session or self._startup_session()
            return (session, *self._view(session, self.options(*controls)))
        except Exception as error:  # noqa: BLE001
            return (session, gr.skip(), gr.skip(), gr.skip(), gr.skip(), _error_text(error))

    def load_upload(self, session: Session | None, photo, disparity, is_depth, normalise, *controls):
        """Replace the scene by an uploaded photo + disparity/depth map (or + the depth model's estimate)."""
        try:
            scene = upload_scene(photo, disparity, is_depth=bool(is_depth), normalise=str(normalise),
                                 depth_estimator=self.depth_estimator)
            new = self._new_session(scene, keep=session)
            loaded = f"loaded {scene.name} ({scene.size[1]}x{scene.size[0]})"
            return (new, to_uint8(scene.image), *self._view(new, self.options(*controls),
                                                              "\n".join(filter(None, [loaded, _notes_text(scene)]))))
        except Exception as error:  # noqa: BLE001
            return (session, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), _error_text(error))

    def load_demo(self, session: Session | None, *controls):
        """Back to the startup scene."""
        try:
            new = self._startup_session(keep=session)
            return (new, to_uint8(new.scene.image), *self._view(new, self.options(*controls)))
        except Exception as error:  # noqa: BLE001
            return (session, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), _error_text(error))

    def full_resolution(self, session: Session | None, renderer, K, blades, rotation_deg, highlight_gain,
                        highlight_threshold, progress=gr.Progress()):
        """Render at full resolution and write the PNG into the session's folder ``renders/<token>/``; returns
        (path, status)."""
        try:
            session = session or self._startup_session()
            options = self.options(renderer, K, blades, rotation_deg, highlight_gain, highlight_threshold)
            progress(0.0, desc=f"rendering {session.scene.size[1]}x{session.scene.size[0]} ({options.renderer})")
            image = render(session.scene, options, session.focus, self.factories[options.renderer], 1.0)
            progress(0.95, desc="saving PNG")
            path = save_render(image, self.output_dir / "renders" / session.token, session.scene, options, session.focus)
            return str(path), f"full resolution written: {path.name}"
        except Exception as error:  # noqa: BLE001
            return gr.skip(), _error_text(error)

    def focus_pull(self, session: Session | None, renderer, K, blades, rotation_deg, highlight_gain,
                   highlight_threshold, progress=gr.Progress()):
        """Render a near-to-far focus sweep at preview resolution as an animated GIF in the session's folder
        ``focus_pulls/<token>/``; returns (path, status)."""
        try:
            session = session or self._startup_session()
            options = self.options(renderer, K, blades, rotation_deg, highlight_gain, highlight_threshold)
            frames = self.focus_pull_frames
            scene, factory = session.scene, self.factories[options.renderer]
            sweep = focus_sweep(scene, frames)
            scale = min(scene.preview_scale(self.preview_side, options.K, focus) for focus in sweep)
            images = []
            for index, focus in enumerate(sweep):
                progress(index / frames, desc=f"focus pull: frame {index + 1} of {frames} (focus {focus:.2f})")
                images.append(render(scene, options, focus, factory, scale))
            name = f"{options.file_stem(scene.name, session.focus)}_focuspull_{uuid.uuid4().hex[:8]}.gif"
            path = write_animation(images, self.output_dir / "focus_pulls" / session.token / name, max_side=self.preview_side)
            return str(path), f"focus pull written: {path.name} ({frames} frames)"
        except Exception as error:  # noqa: BLE001
            return gr.skip(), _error_text(error)


def build_app(callbacks: Callbacks) -> "gr.Blocks":
    """The page: photo, render, disparity view, focus value, controls, uploads, full resolution, focus pull."""
    initial = callbacks.initial_options
    with gr.Blocks(title="BokehDiff refocus", analytics_enabled=False, delete_cache=DELETE_CACHE) as app:
        gr.Markdown("## BokehDiff: click the photo to focus")
        session = gr.State(None)
        with gr.Row():
            photo = gr.Image(label="photo (click to focus)", type="numpy", format="png", interactive=False,
                             elem_id="photo", buttons=[])
            rendered = gr.Image(label="render (preview)", type="numpy", format="png", interactive=False,
                                elem_id="render", buttons=["download"])
        with gr.Row():
            disparity = gr.Image(label="disparity (white = near; green = in focus; red = clicked)", type="numpy",
                                 format="png", interactive=False, elem_id="disparity", buttons=[])
            with gr.Column():
                focus = gr.Number(label="focus (disparity, 1 = near)", precision=4, interactive=False,
                                  elem_id="focus_value")
                info = gr.Markdown(elem_id="focus_info")
                status = gr.Markdown(elem_id="status")
        with gr.Row():
            renderer = gr.Radio(list(callbacks.factories), value=initial.renderer, label="renderer", elem_id="renderer")
            K = gr.Slider(*K_RANGE, value=initial.K, step=0.5, label="K (blur radius px per unit disparity)",
                          elem_id="K")
            blades = gr.Slider(0, BLADES_MAX, value=initial.blades, step=1, label="aperture blades (0-2 = disc)",
                               elem_id="blades")
        with gr.Row():
            rotation = gr.Slider(0, 180, value=initial.rotation_deg, step=1, label="aperture rotation (degrees)",
                                 elem_id="rotation")
            gain = gr.Slider(*HIGHLIGHT_GAIN_RANGE, value=initial.highlight_gain, step=0.1, label="highlight gain",
                             elem_id="highlight_gain")
            threshold = gr.Slider(0, 1, value=initial.highlight_threshold, step=0.01,
                                  label="highlight threshold (linear light)", elem_id="highlight_threshold")
        with gr.Row():
            full_button = gr.Button("Render full resolution (PNG)", elem_id="full_button")
            pull_button = gr.Button("Focus pull (GIF)", elem_id="pull_button")
        with gr.Row():
            full_file = gr.File(label="full-resolution render", interactive=False, elem_id="full_file")
            pull_image = gr.Image(label="focus pull", type="filepath", interactive=False, elem_id="pull_image")
        with gr.Accordion("Your own photo", open=True):
            with gr.Row():
                photo_file = gr.File(label="photo", type="filepath", elem_id="upload_photo")
                disparity_file = gr.File(label="disparity or depth map (.npy, .npz, PNG, TIFF, EXR)",
                                         type="filepath", elem_id="upload_disparity")
                with gr.Column():
                    is_depth = gr.Checkbox(label="the map is depth (larger = farther)", elem_id="is_depth")
                    normalise = gr.Radio(["auto", "always", "never"], value="auto", label="normalise the map",
                                         elem_id="normalise")
                    upload_button = gr.Button("Use this photo", elem_id="upload_button")
                    demo_button = gr.Button("Back to the demo", elem_id="demo_button")

        controls = [renderer, K, blades, rotation, gain, threshold]
        view = [rendered, disparity, focus, info, status]
        app.load(callbacks.start, controls, [session, photo, *view])
        photo.select(callbacks.click, [session, *controls], [session, *view])
        for slider in (K, blades, rotation, gain, threshold):
            slider.release(callbacks.rerender, [session, *controls], [session, *view])
        renderer.change(callbacks.rerender, [session, *controls], [session, *view])
        upload_button.click(callbacks.load_upload,
                            [session, photo_file, disparity_file, is_depth, normalise, *controls],
                            [session, photo, *view])
        demo_button.click(callbacks.load_demo, [session, *controls], [session, photo, *view])
        full_button.click(callbacks.full_resolution, [session, *controls], [full_file, status])
        pull_button.click(callbacks.focus_pull, [session, *controls], [pull_image, status])
    return app
