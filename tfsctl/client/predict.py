"""``tfsctl predict``: send an image to any TF Serving image model and render what comes back.

The request is shaped after the model's own SignatureDef (GetModelMetadata; rules in
:mod:`tfsctl.client.signature`), so tfsctl's sample, the official DeepLab export (``ImageTensor`` ->
``SemanticPredictions``), sthalles-style float exports with scalar ``height``/``width`` and image classifiers all
work. A segmentation becomes a picture (image | colour mask | overlay, legend); a classification a top-k table.

Large photos are scaled down to ``max_side`` before sending and the class map is scaled back (nearest) to the
original size, so the picture and ``--save-labels`` match the file the user gave.

``use_async`` sends with the gRPC future API: the CLI shows a live elapsed-time spinner while the call is in flight,
the round trip is timed by the completion callback, and Ctrl-C cancels the RPC on the server.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tfsctl.client.outputs import ClassNames, TopClass, is_class_map, to_class_map, top_k
from tfsctl.client.render import (
    ClassShare,
    class_shares,
    render_classification,
    render_segmentation,
    save_label_png,
    save_png_atomic,
)
from tfsctl.client.rpc import (
    DEFAULT_TIMEOUT,
    Endpoint,
    check_timeout,
    check_version_or_label,
    endpoint,
    fill_model_spec,
    get_signature_defs,
    rpc_error,
)
from tfsctl.client.signature import ImagePlan, plan_image_request, resolve_signature
from tfsctl.errors import ClientError
from tfsctl.model_layout import DEFAULT_SIGNATURE

# Decompression-bomb guard: images above this many pixels are refused before any pixel is decoded.
# (A 1080p frame is 2.1 Mpx, 8K UHD 33 Mpx.) PIL's own, larger guard still applies as a second line.
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_SIDE = 513  # DeepLab's training crop size (its official export resizes to 513 internally)
_LIMIT_WORDS = re.compile(r"pixel|too (large|big)|larger than|exceed|size|limit", re.IGNORECASE)


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


def fit_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(h, w) scaled down so the longer side is at most ``max_side`` (0 = no limit), aspect ratio kept."""
    if max_side <= 0 or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def prepare_image(image: np.ndarray, plan: ImagePlan, max_side: int) -> np.ndarray:
    """The pixels to send: resized to the signature's fixed size or within ``max_side``; grey for 1 channel."""
    h, w = image.shape[:2]
    size = plan.fixed_size or fit_size(h, w, max_side)
    pil = Image.fromarray(image, "RGB")
    if size != (h, w):
        pil = pil.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    if plan.channels == 1:
        return np.asarray(pil.convert("L"), dtype=np.uint8)[..., None]
    return np.asarray(pil, dtype=np.uint8)


def resize_map(seg: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A class map scaled (nearest neighbour, ids kept) to ``size`` = (h, w)."""
    if seg.shape == size:
        return seg
    small = int(seg.max(initial=0)) <= 255
    img = Image.fromarray(seg.astype(np.uint8 if small else np.int32), "L" if small else "I")
    out = np.asarray(img.resize((size[1], size[0]), Image.Resampling.NEAREST))
    return out.astype(np.int32)


def build_request(
    inputs: dict[str, np.ndarray],
    model: str,
    *,
    signature: str = "",
    version: int | None = None,
    label: str | None = None,
    output_filter: tuple[str, ...] = (),
) -> Any:
    """PredictRequest with ``inputs`` (numbers in ``tensor_content``) and the given ModelSpec and output filter."""
    from tfsctl.client.apis import from_numpy, predict_pb2

    request = predict_pb2.PredictRequest()
    fill_model_spec(request.model_spec, model, signature, version, label)
    for key, arr in inputs.items():
        request.inputs[key].CopyFrom(from_numpy(arr))
    request.output_filter.extend(output_filter)
    return request


def send(
    target: str | Endpoint,
    request: Any,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    use_async: bool = False,
    on_wait: Callable[[float], None] | None = None,
    poll_s: float = 0.1,
    channel: grpc.Channel | None = None,
) -> tuple[Any, float]:
    """Send one Predict; returns ``(response, round_trip_seconds)``.

    With ``use_async`` the call goes through ``Predict.future``: ``on_wait(elapsed_s)`` runs every ``poll_s``
    while it is in flight, and KeyboardInterrupt cancels the RPC before re-raising. ``channel`` reuses an open
    channel (else one is opened and closed here).
    """
    from tfsctl.client.apis import prediction_service_pb2_grpc

    ep = endpoint(target)
    if channel is None:
        with ep.channel() as own:
            return send(ep, request, timeout=timeout, use_async=use_async, on_wait=on_wait, poll_s=poll_s,
                        channel=own)
    what = f"Predict for model '{request.model_spec.name}'"
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    start = time.perf_counter()
    if not use_async:
        try:
            response = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as e:
            raise rpc_error(e, ep, what, timeout) from None
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
        raise rpc_error(e, ep, what, timeout) from None
    except KeyboardInterrupt:
        future.cancel()
        raise
    end = done_at[0] if done_at else time.perf_counter()
    return response, end - start


def decode_outputs(response: Any, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The asked-for outputs as numpy arrays (typed ``*_val`` fields or ``tensor_content``)."""
    from tfsctl.client.apis import to_numpy
    from tfsctl.errors import ServingError

    arrays = {}
    for key in keys:
        if key not in response.outputs:
            have = ", ".join(sorted(response.outputs)) or "none"
            raise ClientError(f"response has no output '{key}' (outputs: {have}); pick one with --output-key")
        try:
            arrays[key] = to_numpy(response.outputs[key], key)
        except ServingError as e:
            raise ClientError(f"cannot decode output '{key}': {e}") from None
    return arrays


@dataclass
class PredictResult:
    """What ``tfsctl predict`` did: served model/version/signature, classes found, files written, timings (ms)."""

    image_size: tuple[int, int]  # (height, width) of the image file
    sent_size: tuple[int, int]  # (height, width) sent to the model
    model: str
    version: int | None
    signature: str
    kind: str  # "segmentation" or "classification"
    input_key: str
    output_keys: tuple[str, ...]
    shares: list[ClassShare]
    top: list[TopClass]
    output: Path | None
    labels_output: Path | None
    rpc_ms: float
    total_ms: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    segmentation: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {
            "image_size": list(self.image_size),
            "sent_size": list(self.sent_size),
            "model": self.model,
            "version": self.version,
            "signature": self.signature,
            "kind": self.kind,
            "input_key": self.input_key,
            "output_keys": list(self.output_keys),
            "classes": [s.to_dict() for s in self.shares],
            "top": [t.to_dict() for t in self.top],
            "output": str(self.output) if self.output else None,
            "labels_output": str(self.labels_output) if self.labels_output else None,
            "rpc_ms": self.rpc_ms,
            "total_ms": self.total_ms,
            "timings_ms": self.timings_ms,
        }


def _writable(path: str | Path | None, flag: str) -> None:
    if path is not None and not Path(path).absolute().parent.is_dir():
        raise ClientError(f"cannot write {flag} {path}: directory {Path(path).parent} does not exist")


def predict_image(
    image_path: str | Path,
    *,
    server: str | Endpoint = "localhost:8500",
    model: str = "deeplab",
    version: int | None = None,
    label: str | None = None,
    signature: str = "",
    output: str | Path | None = "mask.png",
    alpha: float = 0.5,
    timeout: float = DEFAULT_TIMEOUT,
    use_async: bool = False,
    input_key: str | None = None,
    output_key: str | tuple[str, ...] | None = None,
    scale: str = "0-255",
    max_side: int = DEFAULT_MAX_SIDE,
    labels: str | Path | None = None,
    save_labels: str | Path | None = None,
    overlay_only: bool = False,
    k: int = 5,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_wait: Callable[[float], None] | None = None,
    protocol: str = "v1",
) -> PredictResult:
    """Decode ``image_path``, predict on ``server``, write the picture to ``output`` (unless None).

    ``protocol`` v2 asks the Open Inference Protocol's gRPC service instead of TF Serving's (client/v2.py)."""
    from tfsctl.client import v2

    t0 = time.perf_counter()
    check_version_or_label(version, label)
    v2.check_protocol(protocol, signature=signature, label=label)
    if protocol == "v2" and use_async:
        raise ClientError("--async is a v1 option (it sends with the Predict future API)")
    if not 0.0 <= alpha <= 1.0:
        raise ClientError(f"--alpha must be between 0 and 1, got {alpha:g}")
    if max_side < 0:
        raise ClientError(f"--max-side must be 0 (no limit) or positive, got {max_side}")
    if k < 1:
        raise ClientError(f"--top-k must be at least 1, got {k}")
    check_timeout(timeout)
    ep = endpoint(server)
    _writable(output, "--output")
    _writable(save_labels, "--save-labels")
    names = ClassNames.from_file(labels) if labels is not None else None
    image = load_image(image_path, max_pixels)
    t_decoded = time.perf_counter()
    keys = (output_key,) if isinstance(output_key, str) else tuple(output_key or ())
    with ep.channel() as channel:
        if protocol == "v2":
            return _predict_v2(image, ep, channel, model, version, output, alpha, timeout, input_key, keys, scale,
                               max_side, names, save_labels, overlay_only, k, t0, t_decoded)
        spec, sig_defs = get_signature_defs(ep, model, version=version, label=label, timeout=timeout,
                                            channel=channel)
        sig = resolve_signature(sig_defs, signature, model)
        plan = plan_image_request(sig_defs[sig], sig, model=model, input_key=input_key, output_keys=keys,
                                  scale=scale)
        t_meta = time.perf_counter()
        sent = prepare_image(image, plan, max_side)
        # The version the metadata resolved, so a new version appearing in between cannot mix the two calls.
        pinned = int(spec.version.value) if spec.HasField("version") and label is None else version
        request = build_request(plan.inputs(sent), model, signature=sig, version=pinned, label=label,
                                output_filter=plan.outputs)
        t_built = time.perf_counter()
        try:
            response, rpc_s = send(ep, request, timeout=timeout, use_async=use_async, on_wait=on_wait,
                                   channel=channel)
        except ClientError as e:
            raise _limit_error(e, sent.shape[:2], max_side) from None
    t_sent = time.perf_counter()
    arrays = decode_outputs(response, plan.outputs)
    rspec = response.model_spec
    return _result(image, sent, arrays, plan, rspec.name or model,
                   int(rspec.version.value) if rspec.HasField("version") else pinned, rspec.signature_name or sig,
                   output, alpha, names, save_labels, overlay_only, k, rpc_s, (t0, t_decoded, t_meta, t_built, t_sent))


def _predict_v2(image: np.ndarray, ep: Endpoint, channel: grpc.Channel, model: str, version: int | None,
                output: str | Path | None, alpha: float, timeout: float, input_key: str | None, keys: tuple[str, ...],
                scale: str, max_side: int, names: ClassNames | None, save_labels: str | Path | None,
                overlay_only: bool, k: int, t0: float, t_decoded: float) -> PredictResult:
    """predict_image over the v2 protocol: the same planning rules on the v2 metadata, ModelInfer, same result."""
    from tfsctl.client import v2

    meta = v2.model_metadata(channel, ep, model, version, timeout)
    sig = DEFAULT_SIGNATURE
    plan = plan_image_request(v2.signature_def(meta), sig, model=model, input_key=input_key, output_keys=keys,
                              scale=scale)
    t_meta = time.perf_counter()
    sent = prepare_image(image, plan, max_side)
    # The version the metadata described (the latest it lists, as a v2 server describes by default), so a new
    # version appearing in between cannot mix the two calls; v1 pins the version its metadata resolved alike.
    pinned = version if version is not None else v2.latest_version(meta)
    request = v2.build_infer(model, plan.inputs(sent), version=pinned, outputs=plan.outputs)
    t_built = time.perf_counter()
    try:
        response, rpc_s = v2.infer(channel, ep, request, timeout)
    except ClientError as e:
        raise _limit_error(e, sent.shape[:2], max_side) from None
    t_sent = time.perf_counter()
    arrays = v2.decode_infer(response)
    missing = [key for key in plan.outputs if key not in arrays]
    if missing:
        raise ClientError(f"v2 response has no output '{missing[0]}' (outputs: {', '.join(sorted(arrays)) or 'none'})")
    served = v2.version_number(response.model_version)
    if served is None:
        served = pinned
    return _result(image, sent, arrays, plan, response.model_name or model, served, sig, output, alpha, names,
                   save_labels, overlay_only, k, rpc_s, (t0, t_decoded, t_meta, t_built, t_sent))


def _result(image: np.ndarray, sent: np.ndarray, arrays: dict[str, np.ndarray], plan: Any, model: str,
            version: int | None, signature: str, output: str | Path | None, alpha: float, names: ClassNames | None,
            save_labels: str | Path | None, overlay_only: bool, k: int, rpc_s: float,
            marks: tuple[float, float, float, float, float]) -> PredictResult:
    """Render and report the outputs of either protocol."""
    t0, t_decoded, t_meta, t_built, t_sent = marks
    h, w = image.shape[:2]
    map_keys = [key for key in plan.outputs if is_class_map(arrays[key])]
    seg = None
    shares: list[ClassShare] = []
    top: list[TopClass] = []
    written = labels_written = None
    if map_keys:
        kind = "segmentation"
        seg = resize_map(to_class_map(arrays[map_keys[0]], map_keys[0]), (h, w))
        shares = class_shares(seg, names)
        if output is not None:
            written = save_png_atomic(render_segmentation(image, seg, alpha=alpha, names=names,
                                                          overlay_only=overlay_only), output)
        if save_labels is not None:
            labels_written = save_label_png(seg, save_labels)
    else:
        kind = "classification"
        if save_labels is not None:
            raise ClientError("--save-labels needs a segmentation output; this model answered with class scores")
        top = top_k(arrays, plan.outputs, names or ClassNames(), k)
        if output is not None:
            written = save_png_atomic(render_classification(image, top), output)
    t_end = time.perf_counter()
    return PredictResult(
        image_size=(h, w),
        sent_size=(int(sent.shape[0]), int(sent.shape[1])),
        model=model,
        version=version,
        signature=signature,
        kind=kind,
        input_key=plan.image.key,
        output_keys=plan.outputs,
        shares=shares,
        top=top,
        output=written,
        labels_output=labels_written,
        rpc_ms=rpc_s * 1e3,
        total_ms=(t_end - t0) * 1e3,
        timings_ms={
            "decode": (t_decoded - t0) * 1e3,
            "metadata": (t_meta - t_decoded) * 1e3,
            "encode": (t_built - t_meta) * 1e3,
            "rpc": rpc_s * 1e3,
            "render": (t_end - t_sent) * 1e3,
        },
        segmentation=seg,
    )


def _limit_error(err: ClientError, size: tuple[int, int], max_side: int) -> ClientError:
    """A server-side size limit as one clear line that says what to do; other errors unchanged."""
    limit_codes = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
    if err.code not in limit_codes or not _LIMIT_WORDS.search(err.message):
        return err
    h, w = size
    smaller = max(64, max(h, w) // 2)
    return ClientError(f"the server refused the {w}x{h} image ({err.message}); send it smaller, "
                       f"e.g. --max-side {smaller}", err.code)
