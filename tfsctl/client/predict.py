"""``tfsctl predict``: decode an image, send a PredictRequest, render the segmentation it gets back.

Works against any server that speaks TF Serving's PredictionService (``tfsctl serve`` or ``tensorflow_model_server``).
The request follows the DeepLab sample's signature: ``images`` uint8 ``[1, H, W, 3]`` in ``tensor_content``,
``height`` and ``width`` int32 ``[1]``; the response's ``segmentation_map`` (int ``[1, H, W]``) is rendered.

``--async`` sends with the gRPC future API: the CLI shows a live elapsed-time spinner while the call is in flight,
the round trip is timed by the completion callback (not by the polling), and Ctrl-C cancels the RPC on the server
instead of abandoning it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tfsctl.client.render import ClassShare, class_shares, render_overlay, save_png_atomic
from tfsctl.client.rpc import fill_model_spec, open_channel, parse_target, rpc_error
from tfsctl.errors import ClientError

if TYPE_CHECKING:
    from tensorflow_serving.apis.predict_pb2 import PredictRequest, PredictResponse

# Decompression-bomb guard: images above this many pixels are refused before any pixel is decoded.
# (A 1080p frame is 2.1 Mpx, 8K UHD 33 Mpx.) PIL's own, larger guard still applies as a second line.
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_SIGNATURE = "predict_images"
DEFAULT_OUTPUT_KEY = "segmentation_map"
IMAGE_INPUT, HEIGHT_INPUT, WIDTH_INPUT = "images", "height", "width"


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file (any PIL format) to RGB uint8 ``[H, W, 3]``, EXIF orientation applied.

    Raises ClientError for a missing, unreadable, unrecognised, truncated or oversized (bomb) file.
    """
    p = Path(path)
    if not p.exists():
        raise ClientError(f"image {p}: file not found")
    if p.is_dir():
        raise ClientError(f"image {p}: is a directory, not an image file")
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below; PIL's warning tier would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ClientError(
                        f"image {p}: {w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} "
                        "(decompression-bomb guard)"
                    )
                im.load()
                im = ImageOps.exif_transpose(im) or im
                rgb = _to_rgb(im)
    except ClientError:
        raise
    except Image.DecompressionBombError as e:
        raise ClientError(f"image {p}: refused as a possible decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise ClientError(f"image {p}: not a recognised image format (PIL cannot identify it)") from None
    except PermissionError:
        raise ClientError(f"image {p}: cannot read it (permission denied)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ClientError(f"image {p}: truncated or corrupt image data: {e}") from None
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ClientError(f"image {p}: decoded to unexpected shape {list(arr.shape)}")
    return arr


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB view of any mode; transparent pixels are composited over white rather than showing hidden colours."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit greyscale: scale to 8 bits instead of clipping
        arr = np.asarray(im, dtype=np.float64)
        top = arr.max() or 1.0
        return Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")


def build_request(
    image: np.ndarray,
    model: str,
    *,
    signature: str = DEFAULT_SIGNATURE,
    version: int | None = None,
    label: str | None = None,
    output_filter: tuple[str, ...] = (),
) -> PredictRequest:
    """PredictRequest for one ``[H, W, 3]`` uint8 image (``tensor_content``), with ``height``/``width`` ``[1]``."""
    from tensorflow_serving.apis import predict_pb2

    from tfsctl.serving.tensors import from_numpy

    request = predict_pb2.PredictRequest()
    fill_model_spec(request.model_spec, model, signature, version, label)
    h, w = image.shape[:2]
    request.inputs[IMAGE_INPUT].CopyFrom(from_numpy(np.ascontiguousarray(image, dtype=np.uint8)[None]))
    request.inputs[HEIGHT_INPUT].CopyFrom(from_numpy(np.array([h], dtype=np.int32)))
    request.inputs[WIDTH_INPUT].CopyFrom(from_numpy(np.array([w], dtype=np.int32)))
    request.output_filter.extend(output_filter)
    return request


def send(
    target: str,
    request: PredictRequest,
    *,
    timeout: float = 30.0,
    use_async: bool = False,
    on_wait: Callable[[float], None] | None = None,
    poll_s: float = 0.1,
) -> tuple[PredictResponse, float]:
    """Send one Predict; returns ``(response, round_trip_seconds)``.

    With ``use_async`` the call goes through ``Predict.future``: ``on_wait(elapsed_s)`` runs every ``poll_s``
    while it is in flight, and KeyboardInterrupt cancels the RPC before re-raising.
    """
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    what = f"Predict for model '{request.model_spec.name}'"
    with open_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        start = time.perf_counter()
        if not use_async:
            try:
                response = stub.Predict(request, timeout=timeout)
            except grpc.RpcError as e:
                raise rpc_error(e, target, what, timeout) from None
            return response, time.perf_counter() - start
        future = stub.Predict.future(request, timeout=timeout)
        done_at: list[float] = []
        future.add_done_callback(lambda _f: done_at.append(time.perf_counter()))
        try:
            while True:
                try:
                    response = future.result(timeout=poll_s)
                    break
                except grpc.FutureTimeoutError:
                    if on_wait is not None:
                        on_wait(time.perf_counter() - start)
        except grpc.RpcError as e:
            raise rpc_error(e, target, what, timeout) from None
        except KeyboardInterrupt:
            future.cancel()
            raise
        end = done_at[0] if done_at else time.perf_counter()
        return response, end - start


def segmentation_from_response(response: PredictResponse, output_key: str, size: tuple[int, int]) -> np.ndarray:
    """The response's class map as int ``[H, W]`` at the image ``size`` (h, w).

    Accepts ``[1, H, W]``, ``[H, W]`` or ``[1, H, W, 1]`` integer maps, or float scores ``[1, H, W, C]`` (argmax).
    A map at another resolution is resized (nearest) to the image.
    """
    from tfsctl.errors import ServingError
    from tfsctl.serving.tensors import to_numpy

    if output_key not in response.outputs:
        have = ", ".join(sorted(response.outputs)) or "none"
        raise ClientError(f"response has no output '{output_key}' (outputs: {have}); pick one with --output-key")
    try:
        arr = to_numpy(response.outputs[output_key], output_key)
    except ServingError as e:
        raise ClientError(f"cannot decode output '{output_key}': {e}") from None
    if arr.dtype.kind == "f" and arr.ndim >= 3 and arr.shape[-1] > 1:
        arr = np.argmax(arr, axis=-1)
    if arr.dtype.kind not in "iu":
        raise ClientError(f"output '{output_key}' has dtype {arr.dtype}, expected integer class ids")
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ClientError(f"output '{output_key}' has shape {list(arr.shape)}, expected [1, H, W]")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ClientError(f"output '{output_key}' holds class ids {int(arr.min())}..{int(arr.max())}, not in 0..255")
    seg = arr.astype(np.uint8)
    if seg.shape != size:
        seg = np.asarray(Image.fromarray(seg, "L").resize((size[1], size[0]), Image.Resampling.NEAREST))
    return seg


@dataclass
class PredictResult:
    """What ``tfsctl predict`` did: served model/version, class shares, output path and timings (ms)."""

    image_size: tuple[int, int]  # (height, width)
    model: str
    version: int | None
    signature: str
    shares: list[ClassShare]
    output: Path | None
    rpc_ms: float
    total_ms: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    segmentation: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {
            "image_size": list(self.image_size),
            "model": self.model,
            "version": self.version,
            "signature": self.signature,
            "classes": [s.to_dict() for s in self.shares],
            "output": str(self.output) if self.output else None,
            "rpc_ms": self.rpc_ms,
            "total_ms": self.total_ms,
            "timings_ms": self.timings_ms,
        }


def predict_image(
    image_path: str | Path,
    *,
    server: str = "localhost:8500",
    model: str = "deeplab",
    version: int | None = None,
    label: str | None = None,
    signature: str = DEFAULT_SIGNATURE,
    output: str | Path | None = "mask.png",
    alpha: float = 0.5,
    timeout: float = 30.0,
    use_async: bool = False,
    output_key: str = DEFAULT_OUTPUT_KEY,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_wait: Callable[[float], None] | None = None,
) -> PredictResult:
    """Decode ``image_path``, predict on ``server``, write the overlay PNG to ``output`` (unless None)."""
    # The TF Serving protos import TensorFlow (seconds); do it before the clock starts so timings mean the request.
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: F401

    t0 = time.perf_counter()
    if version is not None and label is not None:
        raise ClientError("give either --version or --label, not both")
    if not 0.0 <= alpha <= 1.0:
        raise ClientError(f"--alpha must be between 0 and 1, got {alpha:g}")
    if timeout <= 0:
        raise ClientError(f"--timeout must be positive, got {timeout:g}")
    target = parse_target(server)
    if output is not None and not Path(output).absolute().parent.is_dir():
        raise ClientError(f"cannot write {output}: directory {Path(output).parent} does not exist")
    image = load_image(image_path, max_pixels)
    t_decoded = time.perf_counter()
    request = build_request(
        image, model, signature=signature, version=version, label=label, output_filter=(output_key,)
    )
    t_built = time.perf_counter()
    response, rpc_s = send(target, request, timeout=timeout, use_async=use_async, on_wait=on_wait)
    t_sent = time.perf_counter()
    seg = segmentation_from_response(response, output_key, image.shape[:2])
    shares = class_shares(seg)
    written = None
    if output is not None:
        written = save_png_atomic(render_overlay(image, seg, alpha), output)
    t_end = time.perf_counter()
    spec = response.model_spec
    return PredictResult(
        image_size=(int(image.shape[0]), int(image.shape[1])),
        model=spec.name or model,
        version=int(spec.version.value) if spec.HasField("version") else None,
        signature=spec.signature_name or signature,
        shares=shares,
        output=written,
        rpc_ms=rpc_s * 1e3,
        total_ms=(t_end - t0) * 1e3,
        timings_ms={
            "decode": (t_decoded - t0) * 1e3,
            "encode": (t_built - t_decoded) * 1e3,
            "rpc": rpc_s * 1e3,
            "render": (t_end - t_sent) * 1e3,
        },
        segmentation=seg,
    )
